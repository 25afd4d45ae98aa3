//! `rpc dashboard`: a live web page of a system of services. Every second it lists services
//! and instances from the registry, asks the registry for its members, leader and term, and
//! scrapes the admin port of every instance that announced one (and of any `--scrape`
//! target) into an [`rpc_core::dashboard::Dashboard`], which computes what the page shows.

use crate::CliResult;
use rpc_core::{
    dashboard::{AlertRule, Dashboard, InstanceView, MemberView, RegistryView, Scrape, ServiceView},
    server::admin::{serve_get, Reply},
};
use rpc_registry::{RegistryClient, ADMIN_METADATA};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// How often everything is scraped.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a registry read may take before the page says the registry is unreachable.
const REGISTRY_TIMEOUT: Duration = Duration::from_millis(900);
/// The largest metrics body read from one target.
const MAX_SCRAPE: u64 = 4 << 20;

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

/// Runs the dashboard until SIGTERM or Ctrl-C.
pub(crate) async fn run(args: DashboardArgs) -> CliResult {
    let rules = match args.alert.is_empty() {
        true => rpc_core::dashboard::default_rules(),
        false => args.alert.iter().map(|spec| AlertRule::parse(spec)).collect::<Result<Vec<_>, _>>()?,
    };
    let mut registry = RegistryClient::builder(args.registry.clone());
    if let Some(token) = args.token.or_else(|| std::env::var("RPC_TOKEN").ok()) {
        registry = registry.token(token);
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot serve the dashboard on {}: {e}", args.listen))?;
    let dashboard = Served::start(listener, registry.build(), args.scrape, rules);
    println!("dashboard on http://{}/", dashboard.addr);
    crate::registry::shutdown_signal().await?;
    Ok(())
}

/// A dashboard serving in this process until dropped.
pub(crate) struct Served {
    /// Where the page is served.
    pub(crate) addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    /// Serves the page on `listener` and starts scraping what `registry` lists, and `scrape`.
    pub(crate) fn start(
        listener: TcpListener,
        registry: RegistryClient,
        scrape: Vec<String>,
        rules: Vec<AlertRule>,
    ) -> Served {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let dashboard = Dashboard::new(rules);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = {
            let dashboard = dashboard.clone();
            move |path: &str| {
                dashboard
                    .reply(path)
                    .unwrap_or_else(|| Reply::not_found("the dashboard is at /, its data at /api/state"))
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = serve_get(listener, handler, async { let _ = stopped.await; }) => {}
                () = scrape_forever(registry, scrape, dashboard) => {}
            }
        });
        Served { addr, _stop: stop }
    }
}

async fn scrape_forever(registry: RegistryClient, extra: Vec<String>, dashboard: Dashboard) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let registry_view = registry_view(&registry).await;
        let instances = tokio::time::timeout(REGISTRY_TIMEOUT, registry.instances(None)).await;
        let instances = instances.ok().and_then(Result::ok);
        // (name in the topology, admin address) of every process to scrape.
        let mut targets: Vec<(String, String)> = extra.iter().map(|admin| (admin.clone(), admin.clone())).collect();
        let mut services: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
        for instance in instances.iter().flatten() {
            let admin = instance.metadata.get(ADMIN_METADATA).cloned();
            if let Some(admin) = &admin {
                targets.push((instance.service.clone(), admin.clone()));
            }
            services.entry(instance.service.clone()).or_default().push(InstanceView {
                addr: instance.addr.clone(),
                zone: instance.zone.clone(),
                version: instance.version.clone(),
                admin,
                up: None,
            });
        }
        let scrapes = futures_util::future::join_all(targets.into_iter().map(|(name, admin)| async move {
            let text = scrape(&admin).await.ok();
            Scrape { name, source: admin, text }
        }))
        .await;
        let up: BTreeMap<&str, bool> = scrapes.iter().map(|s| (s.source.as_str(), s.text.is_some())).collect();
        for instance in services.values_mut().flatten() {
            instance.up = instance.admin.as_deref().and_then(|a| up.get(a).copied());
        }
        dashboard.observe(scrapes);
        let services = instances
            .is_some()
            .then(|| services.into_iter().map(|(name, instances)| ServiceView { name, instances }).collect());
        dashboard.set_registry(registry_view, services);
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
async fn scrape(admin: &str) -> Result<String, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        stream.take(MAX_SCRAPE).read_to_end(&mut body).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&body);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
        match head.split(' ').nth(1) {
            Some("200") => Ok(body.to_owned()),
            other => Err(format!("answered {}", other.unwrap_or("nothing"))),
        }
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.unwrap_or_else(|_| Err("timed out".into()))
}
