//! The lookaside balancer: server-side discovery, where a balancer service picks the instance
//! and the client then calls that instance directly.
//!
//! [`LookasideBalancer`] holds the endpoints of many services (set through the
//! `set_endpoints` method, or followed from any [`Discover`] with
//! [`LookasideBalancer::follow`]) and answers `pick(service, key)`. [`LookasideChannel`] is
//! the client mode: a tower `Service<Request>` that asks the balancer for each call (passing the
//! call's [`HASH_KEY`], so consistent hashing works across all clients) and sends the call
//! straight to the instance it names.
//!
//! Trade-offs. The balancer sees every client's choice, so policy lives in one place and thin
//! clients need no discovery; but each call costs an extra round trip, and the balancer is a
//! single point of failure: if it is unreachable no new call can be placed. Run several replicas
//! (they hold no state that must agree: feed each from the same discovery source) and reach them
//! through an [`crate::LbChannel`] over their addresses, so a dead replica is routed around like
//! any endpoint:
//!
//! ```no_run
//! use rpc_lb::{lookaside::{LookasideChannel, LookasideClient}, LbChannel, StaticList};
//! # fn run() {
//! let replicas = LbChannel::builder(StaticList::new(["10.0.0.1:7000", "10.0.0.2:7000"])).connect_lazy();
//! let channel = LookasideChannel::new(LookasideClient::new(replicas));
//! # }
//! ```
//!
//! The balancer does not see the load its picks cause (calls do not pass through it), so its
//! default balancer is consistent hashing by key, random without one.

use crate::{
    balance::{Balancer, Candidate, ConsistentHash, HASH_KEY},
    discover::{Change, Discover, Endpoint},
    Load,
};
use rpc_core::{layer::LayerFuture, Channel, ChannelBuilder, Request, Response, Status};
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// No instance of the service is known to the balancer.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoInstance {
    /// The service asked for.
    pub service: String,
}

/// The lookaside balancer's interface.
#[rpc_core::service]
pub trait Lookaside {
    /// Picks an instance of `service`; calls with the same `key` get the same instance while
    /// membership does not change.
    #[idempotent]
    async fn pick(&self, service: String, key: Option<String>) -> Result<Endpoint, NoInstance>;
    /// Every instance of `service` the balancer knows.
    #[idempotent]
    async fn endpoints(&self, service: String) -> Vec<Endpoint>;
    /// Replaces the instances of `service`; an empty list forgets the service.
    #[idempotent]
    async fn set_endpoints(&self, service: String, endpoints: Vec<Endpoint>);
}

type MakeBalancer = Arc<dyn Fn() -> Arc<dyn Balancer> + Send + Sync>;

/// The balancer service: serve it with `LookasideServer::from_arc(balancer)`.
pub struct LookasideBalancer {
    services: RwLock<HashMap<String, Arc<Pool>>>,
    make_balancer: MakeBalancer,
}

struct Pool {
    candidates: Vec<Candidate>,
    balancer: Arc<dyn Balancer>,
}

impl LookasideBalancer {
    /// A balancer knowing no service, picking by consistent hash.
    pub fn new() -> Arc<LookasideBalancer> {
        LookasideBalancer::with_balancer(ConsistentHash::new)
    }

    /// A balancer knowing no service, with a balancer per service from `make`.
    pub fn with_balancer<B: Balancer>(make: impl Fn() -> B + Send + Sync + 'static) -> Arc<LookasideBalancer> {
        Arc::new(LookasideBalancer { services: RwLock::default(), make_balancer: Arc::new(move || Arc::new(make())) })
    }

    /// Replaces the endpoints of `service`.
    pub fn set(&self, service: impl Into<String>, endpoints: Vec<Endpoint>) {
        let service = service.into();
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        if endpoints.is_empty() {
            services.remove(&service);
            return;
        }
        let now = Instant::now();
        let candidates: Vec<_> =
            endpoints.into_iter().map(|e| Candidate::new(e, Load::new(Duration::from_secs(10), now))).collect();
        let balancer = (self.make_balancer)();
        balancer.update(&candidates);
        services.insert(service, Arc::new(Pool { candidates, balancer }));
    }

    /// Follows `discover` for the endpoints of `service` until the returned task is aborted.
    pub fn follow<D: Discover>(
        self: &Arc<Self>,
        service: impl Into<String>,
        mut discover: D,
    ) -> tokio::task::JoinHandle<()> {
        let (this, service) = (self.clone(), service.into());
        tokio::spawn(async move {
            let mut known = BTreeMap::new();
            loop {
                match discover.next_changes().await {
                    Ok(changes) => {
                        for change in changes {
                            match change {
                                Change::Added(e) | Change::Updated(e) => {
                                    known.insert(e.addr.clone(), e);
                                }
                                Change::Removed(addr) => {
                                    known.remove(&addr);
                                }
                            }
                        }
                        this.set(service.clone(), known.values().cloned().collect());
                    }
                    Err(status) => {
                        tracing::warn!(%service, %status, "discovery unavailable; keeping the last endpoints");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }

    fn pool(&self, service: &str) -> Option<Arc<Pool>> {
        self.services.read().unwrap_or_else(|e| e.into_inner()).get(service).cloned()
    }
}

impl fmt::Debug for LookasideBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        f.debug_map().entries(services.iter().map(|(s, p)| (s, p.candidates.len()))).finish()
    }
}

impl Lookaside for Arc<LookasideBalancer> {
    async fn pick(&self, service: String, key: Option<String>) -> Result<Endpoint, NoInstance> {
        let pool = self.pool(&service);
        let picked = pool.as_ref().and_then(|p| {
            let i = p.balancer.pick(&p.candidates, key.as_deref().map(str::as_bytes), Instant::now())?;
            Some(Endpoint::clone(&p.candidates[i].endpoint))
        });
        picked.ok_or(NoInstance { service })
    }

    async fn endpoints(&self, service: String) -> Vec<Endpoint> {
        self.pool(&service)
            .map_or_else(Vec::new, |p| p.candidates.iter().map(|c| Endpoint::clone(&c.endpoint)).collect())
    }

    async fn set_endpoints(&self, service: String, endpoints: Vec<Endpoint>) {
        self.set(service, endpoints);
    }
}

/// Most instance channels a [`LookasideChannel`] keeps; past it they are all dropped (calls in
/// flight keep theirs) and reopened on demand, bounding memory when instances churn.
const MAX_CHANNELS: usize = 1024;

/// Client mode: asks a lookaside balancer where each call goes, then calls that instance.
/// Cheap to clone; clones share their channels to instances.
#[derive(Clone)]
pub struct LookasideChannel<S> {
    lookaside: LookasideClient<S>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    make: Arc<dyn Fn(&Endpoint) -> ChannelBuilder + Send + Sync>,
}

impl<S> LookasideChannel<S> {
    /// Calls placed by the balancer behind `lookaside`.
    pub fn new(lookaside: LookasideClient<S>) -> LookasideChannel<S> {
        LookasideChannel {
            lookaside,
            channels: Arc::default(),
            make: Arc::new(|e: &Endpoint| Channel::builder(e.addr.clone())),
        }
    }

    /// How to build the channel of each instance (default `Channel::builder(addr)`).
    pub fn channel(mut self, make: impl Fn(&Endpoint) -> ChannelBuilder + Send + Sync + 'static) -> Self {
        self.make = Arc::new(make);
        self
    }

    fn channel_to(&self, endpoint: &Endpoint) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(&endpoint.addr) {
            return channel.clone();
        }
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        let channel = (self.make)(endpoint).connect_lazy();
        channels.insert(endpoint.addr.clone(), channel.clone());
        channel
    }
}

impl<S> fmt::Debug for LookasideChannel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookasideChannel").finish_non_exhaustive()
    }
}

impl<S> tower::Service<Request> for LookasideChannel<S>
where
    S: tower::Service<Request, Response = Response, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Status;
    type Future = LayerFuture<Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut request = request;
            let key = request.options.metadata.get(HASH_KEY).map(str::to_owned);
            let service = request.service.to_string();
            let deadline = request.options.timeout.map(|t| Instant::now() + t);
            let mut pick = this.lookaside.pick(service, key);
            if let Some(timeout) = request.options.timeout {
                pick = pick.timeout(timeout);
            }
            let endpoint = match pick.await {
                Ok(Ok(endpoint)) => endpoint,
                Ok(Err(NoInstance { service })) => {
                    return Err(Status::unavailable(format!("the lookaside balancer knows no instance of {service}"))
                        .with_not_started())
                }
                Err(status) => {
                    return Err(Status::unavailable(format!(
                        "the lookaside balancer could not place the call: {status}; run several replicas behind an LbChannel"
                    ))
                    .with_not_started())
                }
            };
            // The pick took part of the caller's time; the instance gets what is left.
            if let Some(deadline) = deadline {
                request.options.timeout = Some(deadline.saturating_duration_since(Instant::now()));
            }
            tower::Service::call(&mut this.channel_to(&endpoint), request).await
        })
    }
}
