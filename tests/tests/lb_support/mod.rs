//! Instances with injectable faults, shared by the load-balancing and layer tests.

#![allow(dead_code)]

use rpc_core::{server::RunningServer, Server, ServerRequest, ServerResponse, Status};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

/// A service whose instances say who they are.
#[rpc_core::service]
pub trait Node {
    /// Returns the instance's id after sleeping `millis`.
    async fn work(&self, millis: u64) -> u32;
    /// Returns the instance's id; safe to repeat.
    #[idempotent]
    async fn id(&self) -> u32;
}

/// Knobs and counters of one instance.
#[derive(Debug, Default)]
pub struct Ctl {
    pub id: u32,
    /// Extra latency added to every call, in milliseconds.
    pub slow_ms: AtomicU64,
    /// Every other call fails with `Unavailable` before reaching the handler.
    pub fail_half: AtomicBool,
    /// The next this many calls fail with `Unavailable` before reaching the handler.
    pub fail_next: AtomicU64,
    /// Calls that reached the layer.
    pub seen: AtomicU64,
    /// Calls the handler ran.
    pub served: AtomicU64,
    /// While set, `work` waits for [`Ctl::release`] before it starts.
    pub held: AtomicBool,
    gate: tokio::sync::Notify,
}

impl Ctl {
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Lets every held `work` call, and those after it, run.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.gate.notify_waiters();
    }

    async fn wait_if_held(&self) {
        loop {
            let released = self.gate.notified();
            if !self.held.load(Ordering::SeqCst) {
                return;
            }
            released.await;
        }
    }
}

/// The `Node` service of one instance, reporting to its `Ctl`.
pub struct Instance(pub Arc<Ctl>);

impl Node for Instance {
    async fn work(&self, millis: u64) -> u32 {
        self.0.wait_if_held().await;
        if millis > 0 {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        self.0.served.fetch_add(1, Ordering::SeqCst);
        self.0.id
    }

    async fn id(&self) -> u32 {
        self.0.served.fetch_add(1, Ordering::SeqCst);
        self.0.id
    }
}

/// A server layer injecting the faults `Ctl` asks for.
#[derive(Clone)]
pub struct Faults(pub Arc<Ctl>);

impl<S> tower::Layer<S> for Faults {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService { ctl: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub struct FaultService<S> {
    ctl: Arc<Ctl>,
    inner: S,
}

impl<S> tower::Service<ServerRequest> for FaultService<S>
where
    S: tower::Service<ServerRequest, Response = ServerResponse, Error = Status>,
    S::Future: Send + 'static,
{
    type Response = ServerResponse;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<ServerResponse, Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        let ctl = &self.ctl;
        let n = ctl.seen.fetch_add(1, Ordering::SeqCst);
        let fail_next = ctl.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok();
        if fail_next || (ctl.fail_half.load(Ordering::SeqCst) && n % 2 == 1) {
            return Box::pin(std::future::ready(Err(Status::unavailable(format!(
                "instance {} failed on purpose",
                ctl.id
            )))));
        }
        let slow = ctl.slow_ms.load(Ordering::SeqCst);
        let fut = self.inner.call(request);
        Box::pin(async move {
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            fut.await
        })
    }
}

/// Starts instance `id` on a free port.
pub async fn start_node(id: u32) -> (RunningServer, Arc<Ctl>) {
    start_node_with(id, tower::layer::util::Identity::new()).await
}

/// Starts instance `id` with `layer` outside the fault injection.
pub async fn start_node_with<L>(id: u32, layer: L) -> (RunningServer, Arc<Ctl>)
where
    L: tower::Layer<FaultService<rpc_core::server::Router>> + Send + 'static,
    L::Service:
        tower::Service<ServerRequest, Response = ServerResponse, Error = Status> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<ServerRequest>>::Future: Send + 'static,
{
    let ctl = Arc::new(Ctl { id, ..Ctl::default() });
    let server = Server::builder()
        .layer(layer)
        .layer(Faults(ctl.clone()))
        .add_service(NodeServer::new(Instance(ctl.clone())))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    (server, ctl)
}

/// Starts `n` instances with ids `0..n`.
pub async fn start_nodes(n: u32) -> (Vec<RunningServer>, Vec<Arc<Ctl>>, Vec<String>) {
    let (mut servers, mut ctls, mut addrs) = (Vec::new(), Vec::new(), Vec::new());
    for id in 0..n {
        let (server, ctl) = start_node(id).await;
        addrs.push(server.local_addr().to_string());
        servers.push(server);
        ctls.push(ctl);
    }
    (servers, ctls, addrs)
}

/// Waits until `cond` holds, failing the test after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 10 s");
}
