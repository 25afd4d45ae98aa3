//! `rpc demo`: an order service that calls an inventory service, narrated step by step; with
//! `--dashboard`, a live system to watch in `rpc dashboard`'s page instead.

pub(crate) mod live;

use crate::CliResult;
use rpc_core::{Channel, Code, Codec, Context, Server};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// An item is out of stock.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OutOfStock {
    sku: String,
    available: u32,
}

/// A placed order.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Order {
    id: u64,
    sku: String,
    quantity: u32,
}

/// Stock keeping.
#[rpc_core::service]
pub(crate) trait Inventory {
    /// Takes `quantity` of `sku` out of stock; returns what is left.
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, OutOfStock>;
    /// Counts the stock of `sku` slowly, as if a warehouse were asked.
    #[idempotent]
    async fn audit(&self, sku: String) -> u32;
}

/// Orders; calls `Inventory` to reserve stock.
#[rpc_core::service]
pub(crate) trait Orders {
    /// Places an order for `quantity` of `sku`.
    async fn place(&self, sku: String, quantity: u32) -> Result<Order, OutOfStock>;
    /// Audits the stock of `sku` through the inventory service.
    async fn audit(&self, sku: String) -> Result<u32, String>;
}

struct Warehouse {
    stock: Mutex<HashMap<String, u32>>,
}

fn say(who: &str, what: impl std::fmt::Display) {
    println!("{:>11}  {what}", format!("[{who}]"));
}

fn caller() -> String {
    Context::current().and_then(|c| c.caller().map(str::to_owned)).unwrap_or_else(|| "?".into())
}

impl Inventory for Warehouse {
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, OutOfStock> {
        let mut stock = self.stock.lock().unwrap_or_else(|e| e.into_inner());
        let available = stock.get(&sku).copied().unwrap_or(0);
        if available < quantity {
            say("inventory", format!("reserve {quantity} × {sku} for {:?}: only {available} left", caller()));
            return Err(OutOfStock { sku, available });
        }
        stock.insert(sku.clone(), available - quantity);
        say("inventory", format!("reserve {quantity} × {sku} for {:?}: ok, {} left", caller(), available - quantity));
        Ok(available - quantity)
    }

    async fn audit(&self, sku: String) -> u32 {
        /// Says so when the audit is dropped before it finished: at the caller's deadline, or
        /// a moment before it when the caller's cancellation, sent at its own deadline, wins
        /// the race with this server's timer.
        struct Narrate {
            finished: bool,
            deadline: Option<tokio::time::Instant>,
        }
        impl Drop for Narrate {
            fn drop(&mut self) {
                match (self.finished, self.deadline) {
                    (true, _) => {}
                    (false, Some(deadline)) if deadline <= tokio::time::Instant::now() => {
                        say("inventory", "audit cancelled: the caller's deadline passed, work stopped")
                    }
                    (false, _) => say("inventory", "audit cancelled by the caller, who stopped waiting; work stopped"),
                }
            }
        }
        let left = Context::current().and_then(|c| c.remaining()).map(|d| format!("{} ms", d.as_millis()));
        say("inventory", format!("audit {sku}: caller's deadline in {}", left.as_deref().unwrap_or("none")));
        let mut narrate = Narrate { finished: false, deadline: Context::current().and_then(|c| c.deadline()) };
        tokio::time::sleep(Duration::from_millis(500)).await;
        narrate.finished = true;
        self.stock.lock().unwrap_or_else(|e| e.into_inner()).get(&sku).copied().unwrap_or(0)
    }
}

struct Shop {
    inventory: InventoryClient,
    next_id: Mutex<u64>,
}

impl Orders for Shop {
    async fn place(&self, sku: String, quantity: u32) -> Result<Order, OutOfStock> {
        say("orders", format!("place {quantity} × {sku} from {:?} → asking inventory", caller()));
        match self.inventory.reserve(sku.clone(), quantity).await {
            Ok(Ok(_)) => {
                let mut next = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
                *next += 1;
                Ok(Order { id: *next, sku, quantity })
            }
            Ok(Err(out_of_stock)) => Err(out_of_stock),
            Err(status) => {
                say("orders", format!("inventory failed: {status}"));
                Err(OutOfStock { sku, available: 0 })
            }
        }
    }

    async fn audit(&self, sku: String) -> Result<u32, String> {
        say("orders", "audit → asking inventory (the deadline travels along)");
        self.inventory.audit(sku).await.map_err(|status| {
            say("orders", format!("inventory answered {status}"));
            format!("inventory: {}", status.code())
        })
    }
}

pub(crate) async fn run() -> CliResult {
    let warehouse = Warehouse { stock: Mutex::new([("keyboard".to_owned(), 3), ("mouse".to_owned(), 10)].into()) };
    let inventory_server = Server::builder().add_service(InventoryServer::new(warehouse)).start("127.0.0.1:0").await?;
    say("inventory", format!("listening on {}", inventory_server.local_addr()));

    let to_inventory = Channel::builder(inventory_server.local_addr().to_string()).caller("orders").connect_lazy();
    let shop = Shop { inventory: InventoryClient::new(to_inventory), next_id: Mutex::new(0) };
    let orders_server = Server::builder().add_service(OrdersServer::new(shop)).start("127.0.0.1:0").await?;
    say("orders", format!("listening on {}", orders_server.local_addr()));

    for codec in [Codec::MsgPack, Codec::Json] {
        let channel = Channel::builder(orders_server.local_addr().to_string())
            .codec(codec)
            .caller("demo-client")
            .connect()
            .await?;
        let orders = OrdersClient::new(channel);
        say("client", format!("place 2 × keyboard (codec {codec})"));
        let started = Instant::now();
        match orders.place("keyboard".into(), 2).await? {
            Ok(order) => say("client", format!("← order #{} confirmed in {:?}", order.id, started.elapsed())),
            Err(e) => say("client", format!("← refused: only {} × {} available", e.available, e.sku)),
        }
    }

    let orders = OrdersClient::new(
        Channel::builder(orders_server.local_addr().to_string()).caller("demo-client").connect().await?,
    );
    say("client", "audit keyboard with a 150 ms deadline (the audit takes 500 ms)");
    // The orders handler and this client share one deadline, so either may notice first.
    match orders.audit("keyboard".into()).timeout(Duration::from_millis(150)).await {
        Err(status) if status.code() == Code::DeadlineExceeded => say("client", format!("← {status}")),
        Ok(Err(reason)) => say("client", format!("← audit failed: {reason}")),
        other => say("client", format!("← unexpected: {other:?}")),
    }
    // Give the cancellation a moment to reach the inventory service before shutting down.
    tokio::time::sleep(Duration::from_millis(100)).await;

    say("demo", "shutting down gracefully");
    orders_server.shutdown(Duration::from_secs(1)).await?;
    inventory_server.shutdown(Duration::from_secs(1)).await?;
    balanced().await?;
    registry().await?;
    say("demo", "done");
    Ok(())
}

// Part two: one service calling three instances of another through a balancer, one of them
// broken, with the circuit breaker routing around it.

/// A price quoted by one product instance.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Quote {
    instance: String,
    cents: u64,
}

/// Product prices, served by several instances.
#[rpc_core::service]
pub(crate) trait Products {
    /// The price of `sku`.
    #[idempotent]
    async fn price(&self, sku: String) -> Quote;
}

/// Quotes for customers; asks `Products` through a balancer.
#[rpc_core::service]
pub(crate) trait Checkout {
    /// Quotes `sku`, saying which product instance answered.
    async fn quote(&self, sku: String) -> Result<Quote, String>;
}

struct ProductInstance {
    name: String,
    /// A broken instance hangs far past its callers' timeout.
    broken: bool,
}

impl Products for ProductInstance {
    async fn price(&self, _sku: String) -> Quote {
        if self.broken {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Quote { instance: self.name.clone(), cents: 4_999 }
    }
}

struct Counter {
    products: ProductsClient<rpc_lb::LbChannel>,
}

impl Checkout for Counter {
    async fn quote(&self, sku: String) -> Result<Quote, String> {
        self.products.price(sku).await.map_err(|status| status.to_string())
    }
}

async fn balanced() -> CliResult {
    use rpc_lb::{BreakerConfig, BreakerState, LbChannel, RoundRobin, StaticList};

    say("demo", "part two: checkout calls three product instances through a balancer");
    let mut servers = Vec::new();
    let mut names = HashMap::new();
    for (name, broken) in [("product-a", false), ("product-b", false), ("product-c", true)] {
        let instance = ProductInstance { name: name.into(), broken };
        let server = Server::builder().add_service(ProductsServer::new(instance)).start("127.0.0.1:0").await?;
        let state = if broken { " (broken: it hangs)" } else { "" };
        say(name, format!("listening on {}{state}", server.local_addr()));
        names.insert(server.local_addr().to_string(), name);
        servers.push(server);
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    // Round robin makes the broken instance's share visible; the default (P2C on load) would
    // shy away from it even before its circuit opens.
    let products = LbChannel::builder(StaticList::new(addrs))
        .balancer(RoundRobin::new())
        .channel(|e| Channel::builder(e.addr.clone()).caller("checkout").timeout(Duration::from_millis(100)))
        .breaker(BreakerConfig { min_calls: 3, open_for: Duration::from_secs(30), ..BreakerConfig::default() })
        .without_outlier()
        .connect()
        .await?;
    let counter = Counter { products: ProductsClient::new(products.clone()) };
    let checkout_server = Server::builder().add_service(CheckoutServer::new(counter)).start("127.0.0.1:0").await?;
    say("checkout", format!("listening on {}; 100 ms timeout per product call", checkout_server.local_addr()));

    let checkout = CheckoutClient::new(Channel::connect(checkout_server.local_addr().to_string()).await?);
    let mut reported_open = false;
    for i in 1..=15 {
        let started = Instant::now();
        match checkout.quote("keyboard".into()).await? {
            Ok(quote) => say(
                "client",
                format!("quote #{i:<2} ← {} from {} in {:?}", quote.cents, quote.instance, started.elapsed()),
            ),
            Err(reason) => say("client", format!("quote #{i:<2} ← failed: {reason}")),
        }
        for endpoint in products.endpoints() {
            if endpoint.breaker == Some(BreakerState::Open) && !reported_open {
                reported_open = true;
                let name = names.get(&endpoint.endpoint.addr).copied().unwrap_or("?");
                say(
                    "lb",
                    format!("circuit of {name} is OPEN: calls now go around it, failing fast instead of waiting"),
                );
            }
        }
    }
    for server in [checkout_server].into_iter().chain(servers) {
        server.shutdown(Duration::from_millis(100)).await?;
    }
    Ok(())
}

// Part three: the registry. Instances register and are discovered by name, a config value
// reaches a running service, the registry survives losing its leader, and a lock passes on
// when its holder dies.

/// What checkout takes off every price, read live from the registry's config.
#[derive(serde::Serialize, serde::Deserialize)]
struct Discount {
    percent: u64,
}

async fn registry() -> CliResult {
    use rpc_lb::LbChannel;
    use rpc_registry::{Instance, RegistryClient};

    say("demo", "part three: a three-member registry; services find each other through it");
    let (dir, peers, mut members) = start_registry().await?;
    let registry = RegistryClient::connect(peers.iter().map(|(_, addr)| addr.clone()));
    registry.set_config("checkout/discount", &Discount { percent: 0 }).await?;
    let leader = registry.status().await?.leader;
    let leader_name = |id: u64| peers.iter().find(|(n, _)| rpc_registry::member_id(n) == id).map_or("?", |(n, _)| n);
    say("registry", format!("members r0 r1 r2 up; {} leads", leader_name(leader)));

    let mut servers = Vec::new();
    for name in ["product-a", "product-b"] {
        let instance = ProductInstance { name: name.into(), broken: false };
        let server = Server::builder()
            .add_service(ProductsServer::new(instance))
            .announce(registry.announce(Instance::new("products", "").zone("a")))
            .start("127.0.0.1:0")
            .await?;
        say(name, format!("listening on {}; registered as an instance of \"products\"", server.local_addr()));
        servers.push(server);
    }
    let products = ProductsClient::new(LbChannel::builder(registry.discover("products")).connect().await?);
    let discount = registry.config::<Discount>("checkout/discount").await?;
    let quote = |quote: Quote, discount: &Discount| {
        format!(
            "{} cents from {} ({}% off)",
            quote.cents * (100 - discount.percent) / 100,
            quote.instance,
            discount.percent
        )
    };
    for i in 1..=2 {
        let answer = products.price("keyboard".into()).await?;
        say("checkout", format!("quote #{i} ← {} (found by name)", quote(answer, &discount.get())));
    }

    say("operator", "rpc config set checkout/discount '{\"percent\": 20}'");
    let mut discount = discount;
    registry.set_config("checkout/discount", &Discount { percent: 20 }).await?;
    let now = discount.changed().await;
    let answer = products.price("keyboard".into()).await?;
    say("checkout", format!("quote #3 ← {} (the new value arrived without a restart)", quote(answer, &now)));

    let index = peers.iter().position(|(n, _)| rpc_registry::member_id(n) == leader).unwrap_or(0);
    say("demo", format!("stopping the registry's leader {}", leader_name(leader)));
    if let Some(member) = members[index].take() {
        member.shutdown(Duration::from_millis(100)).await?;
    }
    let answer = products.price("keyboard".into()).await?;
    say("checkout", format!("quote #4 ← {} (calls go on meanwhile)", quote(answer, &discount.get())));
    let survivors =
        RegistryClient::connect(peers.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, (_, a))| a.clone()));
    let started = Instant::now();
    let elected = loop {
        if let Ok(status) = survivors.status().await {
            if status.leader != 0 && status.leader != leader {
                break status.leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    say("registry", format!("{} is the new leader after {:?}", leader_name(elected), started.elapsed()));

    say("worker-1", "takes the lock jobs/report, then crashes (kill -9) while holding it");
    let endpoints: Vec<String> =
        peers.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, (_, a))| a.clone()).collect();
    let mut holder = tokio::process::Command::new(std::env::current_exe()?)
        .args(["lock", "jobs/report", "--ttl", "1", "--endpoints", &endpoints.join(","), "--", "sleep", "30"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // It prints its token once it holds the lock.
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(holder.stderr.take().ok_or("no stderr")?));
    let held = lines.next_line().await?.unwrap_or_default();
    say("worker-1", held.trim());
    // SIGKILL to `rpc lock`; on Linux the command it runs dies with it.
    holder.start_kill()?;
    holder.wait().await?;
    let started = Instant::now();
    let guard = survivors.lock("jobs/report").await?;
    say(
        "worker-2",
        format!(
            "holds jobs/report after {:?} (worker-1's lease expired) with fencing token {}",
            started.elapsed(),
            guard.token()
        ),
    );
    guard.unlock().await?;

    for server in servers {
        // Deregisters first, then drains.
        server.shutdown(Duration::from_millis(100)).await?;
    }
    for member in members.into_iter().flatten() {
        member.shutdown(Duration::from_millis(100)).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A running registry member, or `None` once the demo stopped it.
type Members = Vec<Option<rpc_registry::RunningMember>>;

/// Starts a three-member registry (r0, r1, r2) on free ports, its data in a fresh temporary
/// directory: the directory, the members as `(name, address)`, and the running members.
async fn start_registry(
) -> Result<(std::path::PathBuf, Vec<(String, String)>, Members), Box<dyn std::error::Error + Send + Sync>> {
    use rpc_registry::{MemberConfig, RunningMember};

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let dir = std::env::temp_dir().join(format!("rpc-demo-registry-{}-{nanos}", std::process::id()));
    let listeners: Vec<_> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let peers: Vec<(String, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| Ok((format!("r{i}"), l.local_addr()?.to_string())))
        .collect::<Result<_, std::io::Error>>()?;
    drop(listeners);
    let mut members = Vec::new();
    for (name, addr) in &peers {
        let mut config = MemberConfig::new(name.clone(), dir.join(name), addr.clone()).peers(peers.clone());
        config.fsync = false;
        config.admin = Some("127.0.0.1:0".into());
        members.push(Some(RunningMember::start(config).await?));
    }
    Ok((dir, peers, members))
}
