//! A live web page of golden metrics: calls/s, success rate and p50/p95/p99 per method and side
//! over the last five minutes, circuit breakers, who calls whom, and alerts.
//!
//! A [`Dashboard`] is fed [`Scrape`]s (the Prometheus text of [`crate::metrics`], from this
//! process or from admin ports elsewhere) about once a second, and answers the page and its
//! data ([`Dashboard::reply`]). Every server's admin port serves one about itself at `/`;
//! `rpc dashboard` feeds one from every instance a registry lists, adding the registry's view.
//! Alerts are logged when they fire and resolve (target `rpc::alert`).

mod model;

pub use model::AlertRule;

use crate::server::admin::Reply;
use model::Model;
use serde::Serialize;
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;

/// The page: one file, no outside resources; it polls `/api/state` every second.
pub const PAGE: &str = include_str!("page.html");

/// Alert rules used when none are given: more than 5% of calls failing for 10 s, and p99
/// latency above half a second for 30 s.
pub fn default_rules() -> Vec<AlertRule> {
    vec![
        AlertRule::error_rate(0.05, Duration::from_secs(10)),
        AlertRule::p99(Duration::from_millis(500), Duration::from_secs(30)),
    ]
}

/// One round's reading of one process.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The process's name in the topology: the service it is an instance of, say.
    pub name: String,
    /// What tells it apart from other processes of that name: its admin address.
    pub source: String,
    /// Its metrics in Prometheus' text format; `None` if it did not answer.
    pub text: Option<String>,
}

/// A registry's cluster, as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegistryView {
    /// Its members.
    pub members: Vec<MemberView>,
    /// The leader's name, if there is one.
    pub leader: Option<String>,
    /// The Raft term.
    pub term: u64,
    /// The store's revision.
    pub revision: u64,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// One registry member.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Where it serves.
    pub addr: String,
    /// Whether it leads.
    pub leader: bool,
    /// Whether it is a learner (not yet voting).
    pub learner: bool,
}

/// A service and its instances.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    /// The service's name.
    pub name: String,
    /// Its instances.
    pub instances: Vec<InstanceView>,
}

/// One instance of a service.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    /// Where it takes calls.
    pub addr: String,
    /// Its zone.
    pub zone: String,
    /// Its version.
    pub version: String,
    /// Its admin port, if it announced one.
    pub admin: Option<String>,
    /// Whether its admin port answered the last scrape; `None` without an admin port.
    pub up: Option<bool>,
}

/// The page's state, shared by whoever feeds it and whoever serves it. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

struct State {
    model: Model,
    last: Option<Instant>,
    registry: Option<RegistryView>,
    services: Option<Vec<ServiceView>>,
}

#[derive(Serialize)]
struct View<'a> {
    now: f64,
    registry: Option<&'a RegistryView>,
    services: Option<&'a [ServiceView]>,
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

impl Dashboard {
    /// A dashboard that has seen nothing yet, alerting on `rules`.
    pub fn new(rules: Vec<AlertRule>) -> Dashboard {
        let state = State { model: Model::new(rules), last: None, registry: None, services: None };
        Dashboard { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one round of scrapes, one per process; logs the alerts that fired or resolved.
    pub fn observe(&self, scrapes: Vec<Scrape>) {
        let now = Instant::now();
        let mut state = self.lock();
        let elapsed = state.last.map_or(0.0, |last| now.duration_since(last).as_secs_f64());
        state.last = Some(now);
        let parsed: Vec<_> = scrapes
            .into_iter()
            .map(|s| (model::Target { name: s.name, admin: s.source }, s.text.as_deref().map(model::parse)))
            .collect();
        for event in state.model.observe(unix_now(), elapsed, &parsed) {
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
    }

    /// Shows a registry's cluster and services on the page.
    pub fn set_registry(&self, registry: RegistryView, services: Option<Vec<ServiceView>>) {
        let mut state = self.lock();
        state.registry = Some(registry);
        // While the registry cannot be read, the last known instances stay on the page.
        if let Some(services) = services {
            state.services = Some(services);
        }
    }

    /// The page at `/`, its data at `/api/state`; `None` for other paths.
    pub fn reply(&self, path: &str) -> Option<Reply> {
        match path {
            "/" => Some(Reply::ok("text/html; charset=utf-8", PAGE)),
            "/api/state" => Some(Reply::ok("application/json", self.state_json())),
            _ => None,
        }
    }

    /// What the page shows, as JSON.
    pub fn state_json(&self) -> String {
        let state = self.lock();
        let view = View {
            now: unix_now(),
            registry: state.registry.as_ref(),
            services: state.services.as_deref(),
            methods: state
                .model
                .series()
                .map(|(key, points)| MethodView { key, points: points.iter().collect() })
                .collect(),
            breakers: &state.model.breakers,
            edges: &state.model.edges,
            firing: state.model.firing(),
            alerts: state.model.recent_alerts().collect(),
        };
        serde_json::to_string(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
