//! `rpc demo --dashboard`: a small live system to watch. A three-member registry; three
//! `products` instances, each its own process (one of them broken: it hangs); a `checkout`
//! service calling them through a balancer with circuit breakers; steady traffic; and the
//! dashboard. It runs until SIGTERM or Ctrl-C. Kill an instance (its pid is printed) and
//! watch it leave the page.

use super::{say, Checkout, CheckoutClient, CheckoutServer, ProductInstance, ProductsClient, ProductsServer, Quote};
use crate::{dashboard::Served, CliResult};
use rpc_core::{
    metrics::{Metered, Metrics, MetricsLayer},
    trace::{TraceLayer, Traced},
    Channel, Server,
};
use rpc_lb::{BreakerConfig, LbChannel, RoundRobin};
use rpc_registry::{Instance, RegistryClient};
use std::time::Duration;
use tower::Layer;

/// How long a dead instance stays registered: short, so the page shows it leave soon.
const INSTANCE_TTL: u64 = 2;
/// Calls per second the demo's client makes.
const CALLS_PER_SECOND: u64 = 20;

/// `rpc demo --dashboard`.
pub(crate) async fn run(dashboard_addr: &str) -> CliResult {
    let (dir, peers, members) = super::start_registry().await?;
    let endpoints: Vec<String> = peers.iter().map(|(_, addr)| addr.clone()).collect();
    let registry = RegistryClient::connect(endpoints.clone());
    say("registry", format!("members r0 r1 r2 on {}", endpoints.join(",")));

    let mut children = Vec::new();
    for (name, broken) in [("product-a", false), ("product-b", false), ("product-c", true)] {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.args(["__demo-instance", "--name", name, "--registry", &endpoints.join(",")]);
        if broken {
            command.arg("--broken");
        }
        crate::discovery::die_with_this_process(&mut command);
        let mut child = command.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // The instance prints its address once it is registered.
        let addr = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout))
            .next_line()
            .await?
            .ok_or_else(|| format!("{name} exited before it was registered"))?;
        let pid = child.id().unwrap_or(0);
        let state = if broken { " (broken: it hangs)" } else { "" };
        say(name, format!("pid {pid} listening on {addr}{state}"));
        children.push(child);
    }

    let metrics = Metrics::new();
    let products = LbChannel::builder(registry.discover("products"))
        .balancer(RoundRobin::new())
        .channel(|e| Channel::builder(e.addr.clone()).caller("checkout").timeout(Duration::from_millis(100)))
        .breaker(BreakerConfig { min_calls: 3, open_for: Duration::from_secs(5), ..BreakerConfig::default() })
        .without_outlier()
        .connect()
        .await?;
    products.report_to(&metrics, "products");
    let client = MetricsLayer::client(metrics.clone()).layer(TraceLayer::new().layer(products));
    let checkout = Server::builder()
        .layer(TraceLayer::new())
        .metrics(metrics)
        .admin("127.0.0.1:0")
        .add_service(CheckoutServer::new(LiveCheckout { products: ProductsClient::new(client) }))
        .announce(registry.announce(Instance::new("checkout", "")).ttl(INSTANCE_TTL))
        .start("127.0.0.1:0")
        .await?;
    let admin = checkout.admin_addr().map_or_else(String::new, |a| a.to_string());
    say(
        "checkout",
        format!("listening on {}; calls products through a balancer; admin port {admin}", checkout.local_addr()),
    );

    let traffic = tokio::spawn(traffic(checkout.local_addr()));
    let members_admin = members.iter().flatten().filter_map(|m| m.admin_addr()).map(|a| a.to_string()).collect();
    let listener = tokio::net::TcpListener::bind(dashboard_addr)
        .await
        .map_err(|e| format!("cannot serve the dashboard on {dashboard_addr}: {e}"))?;
    let dashboard = Served::start(listener, registry, members_admin, rpc_core::dashboard::default_rules());
    say("dashboard", format!("http://{}/ (Ctrl-C stops the demo)", dashboard.addr));

    crate::registry::shutdown_signal().await?;
    say("demo", "stopping");
    traffic.abort();
    drop(children);
    checkout.shutdown(Duration::from_millis(100)).await?;
    for member in members.into_iter().flatten() {
        member.shutdown(Duration::from_millis(100)).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Checkout, calling products through metrics and tracing layers over the balancer.
struct LiveCheckout {
    products: ProductsClient<Metered<Traced<LbChannel>>>,
}

impl Checkout for LiveCheckout {
    async fn quote(&self, sku: String) -> Result<Quote, String> {
        self.products.price(sku).await.map_err(|status| status.to_string())
    }
}

/// Asks checkout for quotes at a steady pace, each call on its own so a slow one does not
/// hold the others back.
async fn traffic(checkout: std::net::SocketAddr) {
    let Ok(channel) = Channel::builder(checkout).caller("shopper").connect().await else { return };
    let client = CheckoutClient::new(channel);
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / CALLS_PER_SECOND));
    loop {
        ticker.tick().await;
        let client = client.clone();
        tokio::spawn(async move {
            let _ = client.quote("keyboard".into()).await;
        });
    }
}

/// `rpc __demo-instance`: one products instance, registered with its admin port, until killed.
pub(crate) async fn instance(name: String, registry: Vec<String>, broken: bool) -> CliResult {
    let registry = RegistryClient::connect(registry);
    let server = Server::builder()
        .layer(TraceLayer::new())
        .admin("127.0.0.1:0")
        .add_service(ProductsServer::new(ProductInstance { name: name.clone(), broken }))
        .announce(registry.announce(Instance::new("products", "").version(name)).ttl(INSTANCE_TTL))
        .start("127.0.0.1:0")
        .await?;
    println!("{}", server.local_addr());
    server
        .run_until(
            async {
                let _ = crate::registry::shutdown_signal().await;
            },
            Duration::from_millis(100),
        )
        .await?;
    Ok(())
}
