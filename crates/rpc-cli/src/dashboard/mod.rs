//! `rpc dashboard`: a live web page of a system of services. Every second it lists services
//! and instances from the registry, asks the registry for its members, leader and term, and
//! scrapes the admin port of every instance that announced one (and of any `--scrape`
//! target); [`model`] turns the scrapes into golden metrics, circuit states, a topology and
//! alerts. The page polls `/api/state`.

pub(crate) mod model;

use crate::CliResult;
use model::{Model, Rule, Sample, Target};
use rpc_core::server::admin::{serve_get, Reply};
use rpc_registry::{RegistryClient, ADMIN_METADATA};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// The page: one file, no outside resources.
const PAGE: &str = include_str!("page.html");
/// How often everything is scraped.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a registry read may take before the page says the registry is unreachable.
const REGISTRY_TIMEOUT: Duration = Duration::from_millis(900);
/// The largest metrics body read from one target.
const MAX_SCRAPE: u64 = 4 << 20;
/// Alerts without `--alert`.
const DEFAULT_RULES: [&str; 2] = ["error_rate>0.05:10s", "p99>0.5:30s"];

/// `rpc dashboard ...`
#[derive(clap::Args)]
pub(crate) struct DashboardArgs {
    /// Registry members, comma-separated: services, instances and the cluster's state come
    /// from here, and every instance announced with an admin port is scraped.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    registry: Vec<String>,
    /// The address to serve the page on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Also scrape this admin port (host:port), for servers that are not in the registry;
    /// repeat for more.
    #[arg(long, value_name = "ADDR")]
    scrape: Vec<String>,
    /// An alert rule, `error_rate>0.05:10s` or `p99>0.25:30s` (seconds), checked per method
    /// every second; repeat for more. Alerts show on the page and are logged as JSON-ready
    /// events (target rpc::alert). Default: error_rate>0.05:10s and p99>0.5:30s.
    #[arg(long, value_name = "RULE")]
    alert: Vec<String>,
    /// Authenticate to the registry with this bearer token (or set RPC_TOKEN).
    #[arg(long)]
    token: Option<String>,
}

/// The rules used without `--alert`.
pub(crate) fn default_rules() -> Vec<Rule> {
    DEFAULT_RULES.iter().filter_map(|spec| Rule::parse(spec).ok()).collect()
}

/// Runs the dashboard until SIGTERM or Ctrl-C.
pub(crate) async fn run(args: DashboardArgs) -> CliResult {
    let rules = match args.alert.is_empty() {
        true => default_rules(),
        false => args.alert.iter().map(|spec| Rule::parse(spec)).collect::<Result<Vec<_>, _>>()?,
    };
    let mut registry = RegistryClient::builder(args.registry.clone());
    if let Some(token) = args.token.or_else(|| std::env::var("RPC_TOKEN").ok()) {
        registry = registry.token(token);
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot serve the dashboard on {}: {e}", args.listen))?;
    let dashboard = Dashboard::start(listener, registry.build(), args.scrape, rules);
    println!("dashboard on http://{}/", dashboard.addr);
    crate::registry::shutdown_signal().await?;
    Ok(())
}

/// A dashboard serving in this process until dropped.
pub(crate) struct Dashboard {
    /// Where the page is served.
    pub(crate) addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Dashboard {
    /// Serves the page on `listener` and starts scraping.
    pub(crate) fn start(
        listener: TcpListener,
        registry: RegistryClient,
        scrape: Vec<String>,
        rules: Vec<Rule>,
    ) -> Dashboard {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let state = Arc::new(Mutex::new(State::new(rules)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = {
            let state = state.clone();
            move |path: &str| match path {
                "/" => Reply::ok("text/html; charset=utf-8", PAGE),
                "/api/state" => {
                    let json = serde_json::to_string(&lock(&state).view())
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                    Reply::ok("application/json", json)
                }
                _ => Reply::not_found("the dashboard is at /, its data at /api/state"),
            }
        };
        tokio::spawn(async move {
            let scraping = scrape_forever(registry, scrape, state);
            tokio::select! {
                () = serve_get(listener, handler, async { let _ = stopped.await; }) => {}
                () = scraping => {}
            }
        });
        Dashboard { addr, _stop: stop }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the page is built from.
struct State {
    model: Model,
    registry: RegistryView,
    services: Vec<ServiceView>,
}

#[derive(Clone, Default, Serialize)]
struct RegistryView {
    members: Vec<MemberView>,
    leader: Option<String>,
    term: u64,
    revision: u64,
    error: Option<String>,
}

#[derive(Clone, Serialize)]
struct MemberView {
    name: String,
    addr: String,
    leader: bool,
    learner: bool,
}

#[derive(Clone, Serialize)]
struct ServiceView {
    name: String,
    instances: Vec<InstanceView>,
}

#[derive(Clone, Serialize)]
struct InstanceView {
    addr: String,
    zone: String,
    version: String,
    admin: Option<String>,
    /// Whether its admin port answered the last scrape; none without an admin port.
    up: Option<bool>,
}

#[derive(Serialize)]
struct View<'a> {
    now: f64,
    registry: &'a RegistryView,
    services: &'a [ServiceView],
    methods: Vec<MethodView<'a>>,
    breakers: &'a [model::Breaker],
    edges: &'a [model::Edge],
    firing: Vec<model::Firing>,
    alerts: Vec<&'a model::AlertEvent>,
}

#[derive(Serialize)]
struct MethodView<'a> {
    #[serde(flatten)]
    key: &'a model::MethodKey,
    points: Vec<&'a model::Point>,
}

impl State {
    fn new(rules: Vec<Rule>) -> State {
        State { model: Model::new(rules), registry: RegistryView::default(), services: Vec::new() }
    }

    fn view(&self) -> View<'_> {
        View {
            now: unix_now(),
            registry: &self.registry,
            services: &self.services,
            methods: self
                .model
                .series()
                .map(|(key, points)| MethodView { key, points: points.iter().collect() })
                .collect(),
            breakers: &self.model.breakers,
            edges: &self.model.edges,
            firing: self.model.firing(),
            alerts: self.model.recent_alerts().collect(),
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

async fn scrape_forever(registry: RegistryClient, extra: Vec<String>, state: Arc<Mutex<State>>) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let registry_view = registry_view(&registry).await;
        let instances = tokio::time::timeout(REGISTRY_TIMEOUT, registry.instances(None)).await;
        let instances = instances.map_err(|_| "timed out".to_owned()).and_then(|r| r.map_err(|e| e.to_string()));
        let mut targets: Vec<Target> =
            extra.iter().map(|admin| Target { name: admin.clone(), admin: admin.clone() }).collect();
        let mut services: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
        if let Ok(instances) = &instances {
            for instance in instances {
                let admin = instance.metadata.get(ADMIN_METADATA).cloned();
                if let Some(admin) = &admin {
                    targets.push(Target { name: instance.service.clone(), admin: admin.clone() });
                }
                services.entry(instance.service.clone()).or_default().push(InstanceView {
                    addr: instance.addr.clone(),
                    zone: instance.zone.clone(),
                    version: instance.version.clone(),
                    admin,
                    up: None,
                });
            }
        }
        let scrapes = futures_util::future::join_all(targets.into_iter().map(|target| async move {
            let scraped = scrape(&target.admin).await;
            (target, scraped)
        }))
        .await;
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(last).as_secs_f64();
        last = now;
        let up: BTreeMap<&str, bool> = scrapes.iter().map(|(t, s)| (t.admin.as_str(), s.is_ok())).collect();
        for instance in services.values_mut().flatten() {
            instance.up = instance.admin.as_deref().and_then(|a| up.get(a).copied());
        }
        let scrapes: Vec<(Target, Option<Vec<Sample>>)> = scrapes.into_iter().map(|(t, s)| (t, s.ok())).collect();
        let mut state = lock(&state);
        let events = state.model.observe(unix_now(), elapsed, &scrapes);
        for event in events {
            let method = event.method.to_string();
            match event.firing {
                true => {
                    tracing::warn!(target: "rpc::alert", rule = %event.rule, %method, value = event.value, "alert firing")
                }
                false => {
                    tracing::info!(target: "rpc::alert", rule = %event.rule, %method, value = event.value, "alert resolved")
                }
            }
        }
        state.registry = registry_view;
        // While the registry cannot be read, the last known instances stay on the page.
        if instances.is_ok() {
            state.services = services.into_iter().map(|(name, instances)| ServiceView { name, instances }).collect();
        }
    }
}

async fn registry_view(registry: &RegistryClient) -> RegistryView {
    let status = tokio::time::timeout(REGISTRY_TIMEOUT, registry.status()).await;
    match status
        .map_err(|_| "the registry did not answer in time".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(status) => RegistryView {
            leader: status.members.iter().find(|m| m.id == status.leader).map(|m| m.name.clone()),
            members: status
                .members
                .iter()
                .map(|m| MemberView {
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    leader: m.id == status.leader,
                    learner: m.learner,
                })
                .collect(),
            term: status.header.raft_term,
            revision: status.header.revision,
            error: None,
        },
        Err(e) => RegistryView { error: Some(e), ..RegistryView::default() },
    }
}

/// `GET /metrics` from an admin port, bounded in time and size.
async fn scrape(admin: &str) -> Result<Vec<Sample>, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        stream.take(MAX_SCRAPE).read_to_end(&mut body).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&body);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
        match head.split(' ').nth(1) {
            Some("200") => Ok(model::parse(body)),
            other => Err(format!("answered {}", other.unwrap_or("nothing"))),
        }
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.unwrap_or_else(|_| Err("timed out".into()))
}
