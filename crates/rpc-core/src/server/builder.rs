//! [`Server`]: binding a listener, accepting connections within limits, and shutting down.

use super::{
    budget::Budget,
    connection,
    dispatch::{Handlers, Layered},
    Dispatch, Router, ServerRequest, ServerResponse,
};
use crate::{
    metrics::{Metered, Metrics},
    stream::StreamConfig,
    transport::DEFAULT_MAX_FRAME_SIZE,
    Status,
};
use std::{fmt, future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};
use tokio::{
    net::{TcpListener, ToSocketAddrs},
    sync::{watch, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tower::{
    layer::util::{Identity, Stack},
    Layer, Service,
};

/// Limits of a server, each with a builder setter on [`ServerBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct ServerConfig {
    pub(crate) max_frame_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_handlers: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_reply_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_peer: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) frame_timeout: Duration,
    pub(crate) write_queue: usize,
    pub(crate) streams: StreamConfig,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::ServerTls>,
    /// The services served: where a plain Apache Thrift call, which names only its method, goes.
    pub(crate) services: Router,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_in_flight: 1024,
            max_handlers: 65_536,
            max_request_bytes: 256 * 1024 * 1024,
            max_reply_bytes: 256 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_peer: usize::MAX,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            write_queue: 1024,
            streams: StreamConfig::default(),
            #[cfg(feature = "tls")]
            tls: None,
            services: Router::default(),
        }
    }
}

/// Entry point for building a server: `Server::builder()`.
#[derive(Debug)]
pub struct Server(());

impl Server {
    /// A builder with default limits, no layers and no services.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: ServerConfig::default(),
            layer: Identity::new(),
            router: Router::default(),
            announcers: Vec::new(),
            admin: None,
            metrics: None,
        }
    }
}

/// A future an [`Announce`] returns.
pub type AnnounceFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Tells the world outside that a server is up, and that it is going before it stops taking
/// calls: a service registry, a load balancer's target list. Added with
/// [`ServerBuilder::announce`]; the registry's is `RegistryClient::announce`.
pub trait Announce: Send + Sync + 'static {
    /// The server listens as `listening` says. [`ServerBuilder::start`] waits for this, and
    /// fails (and stops the server) if it fails.
    fn up(&self, listening: Listening) -> AnnounceFuture<io::Result<()>>;
    /// The server is about to drain: [`RunningServer::shutdown`] waits for this first, so
    /// clients stop choosing the server before it stops taking calls.
    fn down(&self) -> AnnounceFuture<()>;
}

/// Where a server listens, as told to its [`Announce`]rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listening {
    /// The address it takes calls on.
    pub addr: SocketAddr,
    /// Its admin port, if it has one (see [`ServerBuilder::admin`]).
    pub admin: Option<SocketAddr>,
}

/// Configures a server: limits, layers, services.
pub struct ServerBuilder<L = Identity> {
    config: ServerConfig,
    layer: L,
    router: Router,
    announcers: Vec<Arc<dyn Announce>>,
    /// Where to serve the admin port, if anywhere.
    admin: Option<String>,
    /// Where to record call metrics, if anywhere.
    metrics: Option<Metrics>,
}

impl<L: fmt::Debug> fmt::Debug for ServerBuilder<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("layer", &self.layer)
            .field("router", &self.router)
            .field("announcers", &self.announcers.len())
            .field("admin", &self.admin)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl<L> ServerBuilder<L> {
    /// Largest frame accepted (default 16 MiB); a larger length prefix closes the connection
    /// with a clear error before anything is allocated for it.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Most calls running at once on one connection (default 1024); more get
    /// `ResourceExhausted`.
    pub fn max_in_flight_per_connection(mut self, calls: usize) -> Self {
        self.config.max_in_flight = calls.max(1);
        self
    }

    /// Most handlers running at once across all connections (default 65 536), counting
    /// streams and calls still running after their first poll (one that finishes at once never
    /// counts). Past it, calls get `ResourceExhausted` marked not started, so clients may
    /// retry elsewhere. Connections check it without a lock, so it may be exceeded by at most
    /// one call per connection being served at that instant.
    pub fn max_handlers(mut self, handlers: usize) -> Self {
        self.config.max_handlers = handlers.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// Bytes of large requests (frames over 64 KiB, ours or Apache Thrift's) the server holds
    /// at once across its connections, from the moment their length is read until their call
    /// is done (default 256 MiB). Past it, connections wait to read their next large frame
    /// until bytes are freed; calls already read run on. One frame may always take the whole
    /// budget.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes;
        self
    }

    /// Bytes of replies the server holds for clients that have not read them yet, across its
    /// connections (default 256 MiB). Past it, new calls get `ResourceExhausted` marked not
    /// started until clients read, so one slow reader cannot make the server hold its replies
    /// without bound. Counted are replies of handlers that waited (ones that finish at once
    /// go straight to their connection's writer); running handlers may each add one reply
    /// past the limit.
    pub fn max_reply_bytes(mut self, bytes: usize) -> Self {
        self.config.max_reply_bytes = bytes.max(1);
        self
    }

    /// Most connections open at once from one IP address (default: no limit beyond
    /// [`max_connections`](Self::max_connections)); more are told why and closed. Calls
    /// multiplex, so a well-behaved client needs few; leave it off when clients arrive through
    /// a proxy or NAT that gives them one address.
    pub fn max_connections_per_peer(mut self, connections: usize) -> Self {
        self.config.max_connections_per_peer = connections.max(1);
        self
    }

    /// Most open connections (default 10 000); more are told so and closed.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections.max(1);
        self
    }

    /// Closes connections that carried no call or stream frame and ran no call for this long
    /// (default 5 min); pings do not count. Checked once per period, so an idle connection
    /// closes between one and two periods after its last call.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Records call metrics and serves an admin port on `addr` (`host:port`; keep it private):
    /// `/metrics` in Prometheus' text format, `/health` and `/ready` (503 once shutting down).
    /// See [`crate::metrics`].
    pub fn admin(mut self, addr: impl Into<String>) -> Self {
        self.admin = Some(addr.into());
        self
    }

    /// Records call metrics into `metrics` (served by the admin port, if there is one):
    /// share it with the process's client layers
    /// ([`MetricsLayer::client`](crate::metrics::MetricsLayer::client)) and balancers so one
    /// scrape shows both sides.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves TLS 1.3 (and mutual TLS, if the settings name a client CA); plain TCP clients are
    /// told to use TLS unless the settings allow plaintext.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ServerTls) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// How long a new connection may take to send its preface, TLS handshake included
    /// (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// How long one frame may take to arrive, from its first byte read to its last (default
    /// 30 s, so a full 16 MiB frame needs about 550 KiB/s). A connection whose frame takes
    /// longer is closed, so a client trickling bytes cannot hold a connection slot. Checked
    /// once per period: a stalled frame is cut between one and two periods after it began.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.config.frame_timeout = timeout;
        self
    }

    /// Frames queued for writing per connection before handlers wait (default 1024).
    pub fn write_queue(mut self, frames: usize) -> Self {
        self.config.write_queue = frames.max(1);
        self
    }

    /// Most streams open at once on one connection (default 256); more are refused with
    /// `ResourceExhausted`. Streams also count as calls in flight.
    pub fn max_streams_per_connection(mut self, streams: usize) -> Self {
        self.config.streams.max_streams = streams.max(1);
        self
    }

    /// Bytes of items a client may send on one stream before the handler consumes them
    /// (default 256 KiB): what one slow handler can make the server buffer, plus one item.
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.config.streams.window = bytes.max(1);
        self
    }

    /// Largest stream item, sent or received (default 4 MiB); a larger one fails its stream
    /// with `ResourceExhausted`.
    pub fn max_item_size(mut self, bytes: usize) -> Self {
        self.config.streams.max_item = bytes;
        self
    }

    /// Wraps every service in `layer`; the first layer added is the outermost.
    pub fn layer<N>(self, layer: N) -> ServerBuilder<Stack<N, L>> {
        ServerBuilder {
            config: self.config,
            layer: Stack::new(layer, self.layer),
            router: self.router,
            announcers: self.announcers,
            admin: self.admin,
            metrics: self.metrics,
        }
    }

    /// Announces the server once it listens and withdraws it before it drains (see
    /// [`Announce`]), e.g. `.announce(registry.announce(Instance::new("orders", addr)))`.
    pub fn announce(mut self, announcer: impl Announce) -> Self {
        self.announcers.push(Arc::new(announcer));
        self
    }

    /// Adds a service (a generated `FooServer`); one listener serves any number of them.
    pub fn add_service(mut self, service: impl Dispatch) -> Self {
        self.router.add(service);
        self
    }

    /// Adds a service wrapped in tower layers of its own, inside the server-wide ones (see
    /// [`layer`](Self::layer)): a timeout or limit for one service only. `layer` may be a
    /// `tower::ServiceBuilder` stack; stock tower middleware fits as it is, its `BoxError`s
    /// becoming a [`Status`] as [`Status::from_box_error`] says.
    pub fn add_service_with<N, D>(mut self, layer: N, service: D) -> Self
    where
        D: Dispatch,
        N: Layer<Handlers>,
        N::Service: Service<ServerRequest, Response = ServerResponse> + Clone + Send + Sync + 'static,
        <N::Service as Service<ServerRequest>>::Error: Into<tower::BoxError>,
        <N::Service as Service<ServerRequest>>::Future: Send + 'static,
    {
        self.router.add(Layered::new(layer, service));
        self
    }
}

impl<L> ServerBuilder<L>
where
    L: Layer<Router>,
    L::Service: Service<ServerRequest, Response = ServerResponse, Error = Status> + Clone + Send + Sync + 'static,
    <L::Service as Service<ServerRequest>>::Future: Send + 'static,
{
    /// Binds `addr` and serves in a background task, once every announcer has announced it;
    /// the returned handle stops it.
    pub async fn start(self, addr: impl ToSocketAddrs) -> io::Result<RunningServer> {
        let server = self.start_quietly(TcpListener::bind(addr).await?)?;
        for announcer in &server.announcers {
            if let Err(e) = announcer.up(server.listening()).await {
                let _ = server.shutdown(Duration::ZERO).await;
                return Err(io::Error::new(e.kind(), format!("announcing the server failed: {e}")));
            }
        }
        Ok(server)
    }

    /// Serves on an already bound listener in a background task; announcers announce it in
    /// the background (failures are logged).
    ///
    /// # Panics
    ///
    /// If the admin port (see [`ServerBuilder::admin`]) cannot be bound; bind it yourself
    /// first, or use [`ServerBuilder::start`], to handle that as an error.
    pub fn start_on(self, listener: TcpListener) -> RunningServer {
        let server = match self.start_quietly(listener) {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        };
        for announcer in &server.announcers {
            let (announcer, listening) = (announcer.clone(), server.listening());
            tokio::spawn(async move {
                if let Err(e) = announcer.up(listening).await {
                    tracing::error!(error = %e, "announcing the server failed");
                }
            });
        }
        server
    }

    fn start_quietly(self, listener: TcpListener) -> io::Result<RunningServer> {
        let local_addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (shutdown, signal) = watch::channel(None);
        let metrics = match self.admin.is_some() {
            true => Some(self.metrics.unwrap_or_default()),
            false => self.metrics,
        };
        let admin = match &self.admin {
            Some(addr) => {
                let bound = std::net::TcpListener::bind(addr.as_str())
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot serve the admin port on {addr}: {e}")))?;
                let admin_addr = bound.local_addr()?;
                tokio::spawn(super::admin::serve(
                    bound,
                    local_addr,
                    metrics.clone().unwrap_or_default(),
                    signal.clone(),
                ));
                Some(admin_addr)
            }
            None => None,
        };
        let mut config = self.config;
        config.services = self.router.clone();
        let service = Metered::server(self.layer.layer(self.router), metrics.clone());
        let budget = Budget::new(config.max_handlers, config.max_request_bytes, config.max_reply_bytes);
        if let Some(metrics) = &metrics {
            budget.report_to(metrics);
        }
        let task = tokio::spawn(accept_loop(listener, service, Arc::new(config), budget, signal));
        Ok(RunningServer { local_addr, shutdown, task, announcers: self.announcers, admin, metrics })
    }

    /// Binds `addr` and serves until the process ends.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> io::Result<()> {
        self.serve_with_shutdown(addr, std::future::pending(), Duration::ZERO).await
    }

    /// Binds `addr` and serves until `signal` completes, then shuts down gracefully: stops
    /// accepting, sends every client a go-away, and lets running calls finish for up to `grace`.
    pub async fn serve_with_shutdown(
        self,
        addr: impl ToSocketAddrs,
        signal: impl Future<Output = ()>,
        grace: Duration,
    ) -> io::Result<()> {
        self.start(addr).await?.run_until(signal, grace).await
    }
}

/// Connections open per client IP address, for [`ServerBuilder::max_connections_per_peer`].
#[derive(Clone, Default)]
struct PeerCounts(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

impl PeerCounts {
    /// Counts a connection from `ip` until the returned seat is dropped; also returns how many
    /// are open from `ip`, this one included.
    fn seat(&self, ip: std::net::IpAddr) -> (Seat, usize) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let open = counts.entry(ip).or_default();
        *open += 1;
        (Seat { counts: self.clone(), ip }, *open)
    }
}

/// One connection counted in [`PeerCounts`].
struct Seat {
    counts: PeerCounts,
    ip: std::net::IpAddr,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = counts.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The least time a shutdown gives its announcers to withdraw, however short its grace.
const WITHDRAW_AT_LEAST: Duration = Duration::from_secs(1);

/// How long past its grace period a shutdown waits for connections to write their last frames
/// before it cuts them: a client that stops reading must not hold a shutdown up.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

async fn accept_loop<S>(
    listener: TcpListener,
    service: S,
    config: Arc<ServerConfig>,
    budget: Budget,
    mut shutdown: watch::Receiver<Option<Instant>>,
) where
    S: Service<ServerRequest, Response = ServerResponse, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_peer = PeerCounts::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (seat, open) = per_peer.seat(peer.ip());
                    let admission = if open > config.max_connections_per_peer {
                        Err(format!(
                            "{} already has {} connections open, the server's limit per client address; \
                             calls multiplex, so reuse the open ones",
                            peer.ip(), open - 1
                        ))
                    } else {
                        slots.clone().try_acquire_owned().map_err(|_| format!(
                            "server has reached its limit of {} connections; retry later or use another instance",
                            config.max_connections
                        ))
                    };
                    let serve = connection::serve(
                        stream, peer, service.clone(), config.clone(), shutdown.clone(), admission, budget.clone(),
                    );
                    connections.spawn(async move {
                        serve.await;
                        drop(seat);
                    });
                }
                Err(e) => {
                    // Usually out of file descriptors: wait for connections to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // The sender gone (the server dropped) means stop now.
    let deadline = shutdown.borrow().unwrap_or_else(Instant::now) + SHUTDOWN_FLUSH;
    let drained = tokio::time::timeout_at(deadline, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "connections still writing after the grace period; closing them"
        );
        connections.shutdown().await;
    }
}

/// A server running in the background. Dropping it stops the server at once; prefer
/// [`RunningServer::shutdown`], or [`RunningServer::run_until`] in a `main`.
#[must_use = "dropping a RunningServer stops it at once; keep it, or call shutdown or run_until"]
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
    announcers: Vec<Arc<dyn Announce>>,
    admin: Option<SocketAddr>,
    metrics: Option<Metrics>,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn listening(&self) -> Listening {
        Listening { addr: self.local_addr, admin: self.admin }
    }

    /// The address of the admin port, if the server has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The server's call metrics, if it records them (it has an admin port or was given
    /// [`ServerBuilder::metrics`]).
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// Serves until `signal` resolves (Ctrl-C, say), then shuts down as
    /// [`shutdown`](RunningServer::shutdown) does, giving running calls `grace`.
    pub async fn run_until(self, signal: impl Future<Output = ()>, grace: Duration) -> io::Result<()> {
        signal.await;
        self.shutdown(grace).await
    }

    /// Withdraws the server's announcements, then stops accepting, tells clients to go away,
    /// lets running calls finish, and once `grace` has passed since the call cancels what is
    /// left and closes every connection.
    ///
    /// The grace period covers the withdrawal too, which may take up to a second of it even when
    /// `grace` is shorter (so a short grace can still deregister); calls then drain for what is
    /// left. Whatever clients and registries do, it returns within `max(grace, 1 s)` plus one
    /// second for connections to write their last frames.
    pub async fn shutdown(self, grace: Duration) -> io::Result<()> {
        let RunningServer { shutdown, task, announcers, .. } = self;
        let deadline = Instant::now() + grace;
        // A registry that does not answer must not hold the shutdown past its grace.
        let withdraw = async {
            for announcer in &announcers {
                announcer.down().await;
            }
        };
        if tokio::time::timeout(grace.max(WITHDRAW_AT_LEAST), withdraw).await.is_err() {
            tracing::warn!("withdrawing the server's announcements timed out; draining anyway");
        }
        let _ = shutdown.send(Some(deadline));
        let result = task.await;
        drop(shutdown);
        result.map_err(io::Error::other)
    }
}
