//! [`LbChannel`]: calls to a discovered set of endpoints, balanced, with per-endpoint circuit
//! breaking, outlier ejection and optional active health checks.
//!
//! The channel keeps one [`Channel`] (a connection set) per endpoint. A background task follows
//! the [`Discover`] source: added endpoints get a channel (connected lazily), removed ones leave
//! the set at once but calls already sent to them finish there (they hold the endpoint's channel
//! until they complete), and while the source is unavailable the last known endpoints keep
//! serving. Per call, the balancer sees only candidates that are healthy, not ejected and not
//! open-circuited; that set is cached and rebuilt only when it changes or an ejection or open
//! period ends, so the hot path takes one read lock to pick and one short per-endpoint lock to
//! record the outcome (a closed circuit admits without locking).
//!
//! A call that fails without reaching a handler (connection refused, go-away, open circuit) is
//! sent to another endpoint, up to [`LbChannelBuilder::failover`] times; that is always safe and
//! is what keeps a client succeeding while an instance dies. Retrying calls that may have run is
//! the retry layer's decision, not the channel's.

use crate::{
    balance::{Balancer, Candidate, P2c, HASH_KEY},
    breaker::{Breaker, BreakerConfig, BreakerState, Outcome},
    discover::{Change, Discover, Endpoint},
    health::{HealthCheck, HealthState},
    outlier::{may_eject, Outlier, OutlierConfig},
    Load,
};
use rpc_core::{
    layer::LayerFuture,
    metrics::{Exposition, Metrics},
    Channel, ChannelBuilder, Request, Response, Status,
};
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// First wait after the discovery source failed; doubles up to [`MAX_DISCOVERY_BACKOFF`].
const MIN_DISCOVERY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_DISCOVERY_BACKOFF: Duration = Duration::from_secs(10);

type MakeChannel = Arc<dyn Fn(&Endpoint) -> ChannelBuilder + Send + Sync>;

/// Builds an [`LbChannel`]; every setting has a default that suits most services.
pub struct LbChannelBuilder<D> {
    discover: D,
    balancer: Arc<dyn Balancer>,
    make: MakeChannel,
    breaker: Option<BreakerConfig>,
    outlier: Option<OutlierConfig>,
    health: Option<HealthCheck>,
    failover: u32,
    decay: Duration,
    discovery_wait: Duration,
    zone: Option<String>,
    protect: f64,
}

impl<D: Discover> LbChannelBuilder<D> {
    /// Prefers endpoints in `zone` (the caller's) while at least half of that zone's endpoints
    /// can take calls; otherwise spreads over every zone (default: no preference).
    pub fn prefer_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// When fewer than `share` (0 to 1) of the known endpoints look able to take calls (health
    /// checks, ejections, open circuits), balances over all of them instead: a wave of false
    /// alarms must not pile the whole load on the few left (Nacos's protect threshold; default
    /// 0, off). Open circuits still refuse their calls, which fail over.
    pub fn protect_threshold(mut self, share: f64) -> Self {
        self.protect = share.clamp(0.0, 1.0);
        self
    }

    /// The balancer (default: [`P2c`] over peak-EWMA load).
    pub fn balancer(mut self, balancer: impl Balancer) -> Self {
        self.balancer = Arc::new(balancer);
        self
    }

    /// How to build the channel of each endpoint (codec, connections, caller, timeouts);
    /// default `Channel::builder(addr)`.
    pub fn channel(mut self, make: impl Fn(&Endpoint) -> ChannelBuilder + Send + Sync + 'static) -> Self {
        self.make = Arc::new(make);
        self
    }

    /// Circuit breaking per endpoint with `config` (default: [`BreakerConfig::default`]).
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// No circuit breaking per endpoint.
    pub fn without_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Passive outlier ejection with `config` (default: [`OutlierConfig::default`]).
    pub fn outlier(mut self, config: OutlierConfig) -> Self {
        self.outlier = Some(config);
        self
    }

    /// No outlier ejection.
    pub fn without_outlier(mut self) -> Self {
        self.outlier = None;
        self
    }

    /// Probes every endpoint actively (default: no active checks).
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health = Some(check);
        self
    }

    /// How many other endpoints a call that never reached a handler is sent to (default 2).
    pub fn failover(mut self, attempts: u32) -> Self {
        self.failover = attempts;
        self
    }

    /// Time constant of the peak-EWMA latency (default 10 s, as Finagle and Linkerd).
    pub fn ewma_decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// How long a call waits for the first endpoints from discovery (default 5 s; a call's own
    /// timeout wins when shorter).
    pub fn discovery_wait(mut self, wait: Duration) -> Self {
        self.discovery_wait = wait;
        self
    }

    /// Builds the channel and waits until discovery delivered its first endpoints.
    pub async fn connect(self) -> Result<LbChannel, Status> {
        let wait = self.discovery_wait;
        let channel = self.connect_lazy();
        channel.shared.wait_ready(wait).await?;
        Ok(channel)
    }

    /// Builds the channel; discovery starts in the background and calls wait for it. Must be
    /// called inside a Tokio runtime.
    pub fn connect_lazy(self) -> LbChannel {
        let (ready, _) = watch::channel(false);
        let (closed, closed_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            balancer: self.balancer,
            make: self.make,
            breaker: self.breaker,
            outlier: self.outlier,
            failover: self.failover,
            decay: self.decay,
            discovery_wait: self.discovery_wait,
            zone: self.zone,
            protect: self.protect,
            nodes: Mutex::default(),
            view: RwLock::default(),
            ready,
            last_error: Mutex::default(),
            _closed: closed,
        });
        tokio::spawn(follow(self.discover, Arc::downgrade(&shared), closed_rx.clone()));
        if let Some(check) = self.health {
            tokio::spawn(check_health(check, Arc::downgrade(&shared), closed_rx));
        }
        LbChannel { shared }
    }
}

/// Calls to the endpoints of one service, balanced. Cheap to clone; clones share everything.
///
/// `LbChannel` is a tower `Service<Request>` like [`Channel`]: hand it to a generated client
/// (`FooClient::new(lb)`) or wrap it in layers first.
#[derive(Clone)]
pub struct LbChannel {
    shared: Arc<Shared>,
}

/// What the channel knows about one endpoint, for logs, tests and dashboards.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Calls in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency.
    pub latency: Duration,
    /// Up according to active health checks (always true without them).
    pub healthy: bool,
    /// Ejected as an outlier.
    pub ejected: bool,
    /// State of its circuit breaker, if it has one.
    pub breaker: Option<BreakerState>,
}

impl LbChannel {
    /// A builder following `discover`.
    pub fn builder<D: Discover>(discover: D) -> LbChannelBuilder<D> {
        LbChannelBuilder {
            discover,
            balancer: Arc::new(P2c::new()),
            make: Arc::new(|e: &Endpoint| Channel::builder(e.addr.clone())),
            breaker: Some(BreakerConfig::default()),
            outlier: Some(OutlierConfig::default()),
            health: None,
            failover: 2,
            decay: Duration::from_secs(10),
            discovery_wait: Duration::from_secs(5),
            zone: None,
            protect: 0.0,
        }
    }

    /// The endpoints known now, with their state.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.shared.nodes().iter().map(|n| n.status(now)).collect()
    }

    /// Reports this channel's endpoints in `metrics` under `target` (the service it calls),
    /// for as long as the channel lives: calls sent to each endpoint, its load and latency,
    /// whether it is up, its circuit's state and how often it opened, and outlier ejections.
    pub fn report_to(&self, metrics: &Metrics, target: impl Into<String>) {
        let (shared, target) = (Arc::downgrade(&self.shared), target.into());
        metrics.collect(move |out| {
            if let Some(shared) = shared.upgrade() {
                report(&shared, &target, out);
            }
        });
    }
}

/// Writes the metrics of [`LbChannel::report_to`].
fn report(shared: &Shared, target: &str, out: &mut Exposition<'_>) {
    let now = Instant::now();
    let nodes = shared.nodes().clone();
    let statuses: Vec<(&Node, EndpointStatus)> = nodes.iter().map(|n| (&**n, n.status(now))).collect();
    type Value = fn(&Node, &EndpointStatus) -> f64;
    let families: [(&str, &str, &str, Value); 6] = [
        ("rpc_lb_picks_total", "counter", "Calls sent to the endpoint.", |n, _| n.picks.load(Ordering::Relaxed) as f64),
        ("rpc_lb_endpoint_in_flight", "gauge", "Calls in flight on the endpoint.", |_, s| s.in_flight as f64),
        ("rpc_lb_endpoint_latency_seconds", "gauge", "The endpoint's peak-EWMA latency.", |_, s| {
            s.latency.as_secs_f64()
        }),
        ("rpc_lb_endpoint_up", "gauge", "1 if health checks pass and it is not ejected.", |_, s| {
            f64::from(u8::from(s.healthy && !s.ejected))
        }),
        ("rpc_lb_breaker_opened_total", "counter", "Times the endpoint's circuit opened.", |n, _| {
            n.opened.load(Ordering::Relaxed) as f64
        }),
        ("rpc_lb_ejections_total", "counter", "Times the endpoint was ejected as an outlier.", |n, _| {
            n.ejections.load(Ordering::Relaxed) as f64
        }),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for (node, status) in &statuses {
            out.sample(name, &[("target", target), ("endpoint", &node.addr)], value(node, status));
        }
    }
    let name = "rpc_lb_breaker_state";
    out.family(name, "gauge", "1 for the state the endpoint's circuit is in (closed, half_open, open).");
    for (node, status) in &statuses {
        let Some(current) = status.breaker else { continue };
        for (state, label) in
            [(BreakerState::Closed, "closed"), (BreakerState::HalfOpen, "half_open"), (BreakerState::Open, "open")]
        {
            let labels = [("target", target), ("endpoint", node.addr.as_str()), ("state", label)];
            out.sample(name, &labels, f64::from(u8::from(current == state)));
        }
    }
}

impl fmt::Debug for LbChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LbChannel").field("endpoints", &self.endpoints()).finish()
    }
}

impl tower::Service<Request> for LbChannel {
    type Response = Response;
    type Error = Status;
    type Future = LayerFuture<Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Endpoints are chosen per call; each endpoint's channel applies its own limits.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Box::pin(call(self.shared.clone(), request))
    }
}

struct Shared {
    balancer: Arc<dyn Balancer>,
    make: MakeChannel,
    breaker: Option<BreakerConfig>,
    outlier: Option<OutlierConfig>,
    failover: u32,
    decay: Duration,
    discovery_wait: Duration,
    zone: Option<String>,
    protect: f64,
    /// Every known endpoint; the source of truth the view is built from.
    nodes: Mutex<Vec<Arc<Node>>>,
    /// The candidates calls choose from.
    view: RwLock<Arc<View>>,
    /// True once discovery delivered its first endpoints.
    ready: watch::Sender<bool>,
    last_error: Mutex<Option<Status>>,
    /// Dropped with the last clone of the channel, which stops the background tasks.
    _closed: watch::Sender<()>,
}

#[derive(Default)]
struct View {
    candidates: Vec<Candidate>,
    nodes: Vec<Arc<Node>>,
    /// Endpoints known, eligible or not.
    known: usize,
    /// When an ejection or open circuit ends, making the view stale.
    recheck_at: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic elsewhere cannot poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn nodes(&self) -> MutexGuard<'_, Vec<Arc<Node>>> {
        lock(&self.nodes)
    }

    /// Runs `f` on the current view under its read lock: no reference count touched per call, and
    /// the balancer's state always matches the view it picks from (see `rebuild`).
    fn with_view<R>(&self, now: Instant, f: impl FnOnce(&View) -> R) -> R {
        let due = |view: &View| view.recheck_at.is_some_and(|t| now >= t);
        {
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            if !due(&view) {
                return f(&view);
            }
        }
        let nodes = self.nodes();
        // Callers that noticed together rebuild once: the first to take the nodes lock.
        if due(&self.view.read().unwrap_or_else(|e| e.into_inner())) {
            self.rebuild_from(&nodes, now);
        }
        drop(nodes);
        f(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn rebuild(&self, now: Instant) -> Arc<View> {
        self.rebuild_from(&self.nodes(), now)
    }

    /// Builds and publishes the view of `nodes` (the caller holds the nodes lock).
    fn rebuild_from(&self, nodes: &[Arc<Node>], now: Instant) -> Arc<View> {
        let mut view = View { known: nodes.len(), ..View::default() };
        let mut eligible = Vec::new();
        for node in nodes.iter() {
            match node.blocked(now) {
                Blocked::No => eligible.push(node),
                Blocked::Until(t) => view.recheck_at = Some(view.recheck_at.map_or(t, |r| r.min(t))),
                Blocked::Down => {}
            }
        }
        // The pool: the caller's zone while at least half of it can take calls, else everyone.
        let mut pool: Vec<&Arc<Node>> = nodes.iter().collect();
        if let Some(zone) = &self.zone {
            let in_zone = |n: &&Arc<Node>| n.endpoint().zone.as_deref() == Some(zone.as_str());
            let local = eligible.iter().copied().filter(in_zone).count();
            let local_known = nodes.iter().filter(in_zone).count();
            if local > 0 && 2 * local >= local_known {
                pool.retain(in_zone);
                eligible.retain(in_zone);
            }
        }
        if (eligible.len() as f64) < self.protect * pool.len() as f64 {
            tracing::warn!(
                eligible = eligible.len(),
                known = pool.len(),
                "too few endpoints look able to take calls; balancing over all of them"
            );
            eligible = pool;
        }
        for node in eligible {
            view.candidates.push(Candidate { endpoint: node.endpoint(), load: node.load.clone() });
            view.nodes.push(node.clone());
        }
        let view = Arc::new(view);
        // Under the write lock: picks run under the read lock, so none sees the balancer updated
        // for a view other than the one it picks from.
        let mut current = self.view.write().unwrap_or_else(|e| e.into_inner());
        self.balancer.update(&view.candidates);
        *current = view.clone();
        drop(current);
        view
    }

    fn apply(&self, changes: Vec<Change>) {
        let now = Instant::now();
        {
            let mut nodes = self.nodes();
            for change in changes {
                match change {
                    Change::Added(endpoint) | Change::Updated(endpoint) => {
                        match nodes.iter().find(|n| n.addr == endpoint.addr) {
                            Some(node) => *lock(&node.endpoint) = Arc::new(endpoint),
                            None => {
                                tracing::debug!(addr = %endpoint.addr, "endpoint added");
                                nodes.push(Arc::new(Node::new(endpoint, self, now)));
                            }
                        }
                    }
                    Change::Removed(addr) => {
                        tracing::debug!(%addr, "endpoint removed; its calls in flight finish there");
                        nodes.retain(|n| n.addr != addr);
                    }
                }
            }
        }
        self.rebuild(now);
        *lock(&self.last_error) = None;
        self.ready.send_replace(true);
    }

    async fn wait_ready(&self, wait: Duration) -> Result<(), Status> {
        let mut ready = self.ready.subscribe();
        let outcome = tokio::time::timeout(wait, ready.wait_for(|r| *r)).await.map(|r| r.is_ok());
        match outcome {
            Ok(true) => Ok(()),
            _ => {
                let why = lock(&self.last_error).as_ref().map_or("no answer yet".to_owned(), |s| s.to_string());
                Err(Status::unavailable(format!("discovery delivered no endpoints within {wait:?}: {why}"))
                    .with_not_started())
            }
        }
    }

    /// An endpoint for `request`, and whether another would be left to fail over to.
    fn pick(
        &self,
        view: &View,
        request: &Request,
        now: Instant,
        tried: &mut Vec<Arc<Node>>,
    ) -> Result<(Arc<Node>, bool), Status> {
        match self.choose(view, request, now, tried) {
            Some(node) => Ok((node, view.nodes.len() > tried.len() + 1)),
            None => Err(no_endpoint(view, request)),
        }
    }

    /// Picks an endpoint not in `tried` whose breaker lets the call through.
    fn choose(&self, view: &View, request: &Request, now: Instant, tried: &mut Vec<Arc<Node>>) -> Option<Arc<Node>> {
        let key = request.options.metadata.get(HASH_KEY).map(str::as_bytes);
        let n = view.nodes.len();
        let first = self.balancer.pick(&view.candidates, key, now)?;
        for step in 0..n {
            let node = &view.nodes[(first + step) % n];
            if tried.iter().any(|t| Arc::ptr_eq(t, node)) {
                continue;
            }
            if node.try_acquire(now) {
                return Some(node.clone());
            }
            tried.push(node.clone());
        }
        None
    }

    /// Ejects `node` if the cap on ejected endpoints allows; true if it did.
    fn try_eject(&self, node: &Node, now: Instant) -> bool {
        let Some(config) = &self.outlier else { return false };
        let nodes = self.nodes();
        let ejected =
            nodes.iter().filter(|n| lock(&n.policy).outlier.as_ref().is_some_and(|o| o.is_ejected(now))).count();
        if !nodes.iter().any(|n| std::ptr::eq(&**n, node)) || !may_eject(ejected, nodes.len(), config) {
            return false;
        }
        let mut policy = lock(&node.policy);
        let Some(outlier) = policy.outlier.as_mut() else { return false };
        let until = outlier.eject(now, config);
        node.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(addr = %node.addr, ejected_for = ?until - now, "endpoint ejected as an outlier");
        true
    }
}

async fn call(shared: Arc<Shared>, request: Request) -> Result<Response, Status> {
    let mut tried = Vec::new();
    let mut attempt = 0;
    let mut now = Instant::now();
    // The timeout is relative; pinned here so that failover attempts share one deadline.
    let deadline = request.options.timeout.map(|t| now + t);
    // Taken by the last attempt; every earlier attempt sends a copy (a few reference counts).
    let mut request = Some(request);
    loop {
        let Some(pending) = request.as_mut() else {
            return Err(Status::internal("balanced call has no request left to send"));
        };
        if attempt > 0 {
            now = Instant::now();
            if let Some(deadline) = deadline {
                pending.options.timeout = Some(deadline.saturating_duration_since(now));
            }
        }
        let picked = shared.with_view(now, |view| {
            // Nothing discovered yet: wait for discovery, then look again.
            (view.known > 0 || *shared.ready.borrow()).then(|| shared.pick(view, pending, now, &mut tried))
        });
        let (node, others) = match picked {
            Some(picked) => picked?,
            None => {
                let wait = pending.options.timeout.map_or(shared.discovery_wait, |t| t.min(shared.discovery_wait));
                shared.wait_ready(wait).await?;
                // The wait must not count as this call's latency.
                now = Instant::now();
                shared.with_view(now, |view| shared.pick(view, pending, now, &mut tried))?
            }
        };
        let last = attempt >= shared.failover || !others;
        let this_try = if last { request.take() } else { Some(pending.clone()) };
        let Some(this_try) = this_try else {
            return Err(Status::internal("balanced call has no request left to send"));
        };
        let result = {
            let mut flight = Flight { shared: &shared, node: &node, started: now, done: false };
            node.load.start();
            node.picks.fetch_add(1, Ordering::Relaxed);
            let result = node.channel.send(this_try).await;
            flight.finish(&result);
            result
        };
        match result {
            Err(status) if status.not_started() && !last => {
                tracing::debug!(addr = %node.addr, %status, "call did not reach the endpoint; trying another");
                tried.push(node);
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn no_endpoint(view: &View, request: &Request) -> Status {
    let why = if view.known == 0 {
        "discovery lists no endpoint".to_owned()
    } else {
        format!("none of its {} endpoints can take the call (down, ejected, circuit open or already tried)", view.known)
    };
    Status::unavailable(format!("no endpoint for {}.{}: {why}", request.service, request.method)).with_not_started()
}

/// A call on one endpoint: counted in its load until it ends, and its outcome recorded even if
/// the caller drops it.
struct Flight<'a> {
    shared: &'a Shared,
    node: &'a Node,
    started: Instant,
    done: bool,
}

impl Flight<'_> {
    fn finish(&mut self, result: &Result<Response, Status>) {
        self.record(Outcome::of(result));
    }

    fn record(&mut self, outcome: Outcome) {
        self.done = true;
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.started);
        // Only answers are measured: a failure that is fast must not make its endpoint look fast.
        self.node.load.end(now, (outcome == Outcome::Success).then_some(latency));
        let (mut changed, mut eject) = (false, false);
        {
            let mut policy = lock(&self.node.policy);
            if let Some(breaker) = policy.breaker.as_mut() {
                if breaker.record(now, outcome, latency) {
                    changed = true;
                    let state = breaker.state(now);
                    self.node.closed.store(state == BreakerState::Closed, Ordering::Relaxed);
                    if state == BreakerState::Open {
                        self.node.opened.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(addr = %self.node.addr, ?state, "endpoint circuit changed");
                }
            }
            if let (Some(outlier), Some(config), false) =
                (policy.outlier.as_mut(), &self.shared.outlier, outcome == Outcome::Ignored)
            {
                eject = outlier.record(now, outcome == Outcome::Failure, config);
            }
        }
        if eject {
            changed |= self.shared.try_eject(self.node, now);
        }
        if changed {
            self.shared.rebuild(now);
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome::Ignored);
        }
    }
}

/// One endpoint and everything the channel keeps for it.
struct Node {
    addr: String,
    endpoint: Mutex<Arc<Endpoint>>,
    channel: Channel,
    load: Arc<Load>,
    policy: Mutex<Policy>,
    health: Mutex<HealthState>,
    up: AtomicBool,
    /// Mirrors "the breaker is closed" (or there is none), updated under the policy lock
    /// whenever the breaker changes state. A reader that sees it a moment late lets one call
    /// through, which the breaker then disregards (see `Breaker::record` while open).
    closed: AtomicBool,
    /// Calls sent to it, for metrics.
    picks: AtomicU64,
    /// Times its circuit opened, for metrics.
    opened: AtomicU64,
    /// Times it was ejected as an outlier, for metrics.
    ejections: AtomicU64,
}

struct Policy {
    breaker: Option<Breaker>,
    outlier: Option<Outlier>,
}

enum Blocked {
    No,
    Until(Instant),
    Down,
}

impl Node {
    fn new(endpoint: Endpoint, shared: &Shared, now: Instant) -> Node {
        Node {
            addr: endpoint.addr.clone(),
            channel: (shared.make)(&endpoint).connect_lazy(),
            endpoint: Mutex::new(Arc::new(endpoint)),
            load: Arc::new(Load::new(shared.decay, now)),
            policy: Mutex::new(Policy {
                breaker: shared.breaker.clone().map(|c| Breaker::new(c, now)),
                outlier: shared.outlier.as_ref().map(|c| Outlier::new(c, now)),
            }),
            health: Mutex::default(),
            up: AtomicBool::new(true),
            closed: AtomicBool::new(true),
            picks: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    fn endpoint(&self) -> Arc<Endpoint> {
        lock(&self.endpoint).clone()
    }

    fn blocked(&self, now: Instant) -> Blocked {
        if !self.up.load(Ordering::Relaxed) {
            return Blocked::Down;
        }
        let policy = lock(&self.policy);
        let ejected = policy.outlier.as_ref().and_then(|o| o.ejected_until(now));
        let open = policy.breaker.as_ref().and_then(|b| b.open_until(now));
        match (ejected, open) {
            (Some(a), Some(b)) => Blocked::Until(a.max(b)),
            (Some(t), None) | (None, Some(t)) => Blocked::Until(t),
            (None, None) => Blocked::No,
        }
    }

    fn try_acquire(&self, now: Instant) -> bool {
        // A closed circuit admits every call: skip the lock on the common path.
        if self.closed.load(Ordering::Relaxed) {
            return true;
        }
        let mut policy = lock(&self.policy);
        let Some(breaker) = policy.breaker.as_mut() else { return true };
        let admitted = breaker.try_acquire(now);
        self.closed.store(breaker.state(now) == BreakerState::Closed, Ordering::Relaxed);
        admitted
    }

    fn status(&self, now: Instant) -> EndpointStatus {
        let policy = lock(&self.policy);
        EndpointStatus {
            endpoint: self.endpoint(),
            in_flight: self.load.in_flight(),
            latency: self.load.latency(now),
            healthy: self.up.load(Ordering::Relaxed),
            ejected: policy.outlier.as_ref().is_some_and(|o| o.is_ejected(now)),
            breaker: policy.breaker.as_ref().map(|b| b.state(now)),
        }
    }
}

/// Follows the discovery source until the channel is dropped.
async fn follow<D: Discover>(mut discover: D, shared: Weak<Shared>, mut closed: watch::Receiver<()>) {
    let mut backoff = MIN_DISCOVERY_BACKOFF;
    loop {
        let next = tokio::select! {
            next = discover.next_changes() => next,
            _ = closed.changed() => return,
        };
        let Some(live) = shared.upgrade() else { return };
        match next {
            Ok(changes) => {
                backoff = MIN_DISCOVERY_BACKOFF;
                live.apply(changes);
            }
            Err(status) => {
                tracing::warn!(%status, retry_in = ?backoff, "discovery unavailable; serving the last known endpoints");
                *lock(&live.last_error) = Some(status);
                drop(live);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = closed.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_DISCOVERY_BACKOFF);
            }
        }
    }
}

/// Probes every endpoint each interval until the channel is dropped.
async fn check_health(check: HealthCheck, shared: Weak<Shared>, mut closed: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closed.changed() => return,
        }
        let Some(live) = shared.upgrade() else { return };
        let nodes = live.nodes().clone();
        drop(live);
        let probes: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (probe, channel, timeout) = (check.probe.clone(), node.channel.clone(), check.timeout);
                tokio::spawn(async move { matches!(tokio::time::timeout(timeout, probe(channel)).await, Ok(Ok(()))) })
            })
            .collect();
        let mut changed = false;
        for (node, probe) in nodes.iter().zip(probes) {
            let ok = probe.await.unwrap_or(false);
            if let Some(up) = lock(&node.health).record(ok, &check) {
                tracing::info!(addr = %node.addr, up, "endpoint health changed");
                node.up.store(up, Ordering::Relaxed);
                changed = true;
            }
        }
        if changed {
            if let Some(live) = shared.upgrade() {
                live.rebuild(Instant::now());
            }
        }
    }
}
