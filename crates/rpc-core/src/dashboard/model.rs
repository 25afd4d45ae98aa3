//! What the dashboard shows, computed from scrapes of admin ports with time passed in: golden
//! metrics per method over the last minutes, circuit states, who calls whom, and alerts.

use serde::Serialize;
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
};

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Parses the text format; lines it cannot read are skipped, so one odd series does not blind
/// the dashboard to the rest.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample { name: name.into(), labels: Vec::new(), value: value.trim().parse().ok()? });
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = None;
    while let Some((i, c)) = chars.next() {
        if c == '}' {
            end = Some(i);
            break;
        }
        if c == ',' || c == ' ' {
            continue;
        }
        let key_start = i;
        let eq = rest[key_start..].find('=')? + key_start;
        let key = rest[key_start..eq].to_owned();
        while chars.next_if(|&(j, _)| j <= eq).is_some() {}
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((key, value));
    }
    let value = rest[end? + 1..].trim().split(' ').next()?.parse().ok()?;
    Some(Sample { name: name.into(), labels, value })
}

/// A method on one side of its calls.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub(crate) struct MethodKey {
    pub(crate) side: String,
    pub(crate) service: String,
    pub(crate) method: String,
}

impl fmt::Display for MethodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} ({})", self.service, self.method, self.side)
    }
}

/// Cumulative counts of one method in one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    /// Finished calls by status code name.
    by_status: BTreeMap<String, f64>,
    /// Cumulative bucket counts by upper bound, all statuses together.
    buckets: BTreeMap<Bound, f64>,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Clone, Copy, Debug)]
struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn totals(samples: &[Sample]) -> HashMap<MethodKey, Totals> {
    let mut out: HashMap<MethodKey, Totals> = HashMap::new();
    for sample in samples {
        let Some(rest) = sample.name.strip_prefix("rpc_") else { continue };
        let Some((side, what)) = rest.split_once("_call_duration_seconds_") else { continue };
        let (Some(service), Some(method)) = (sample.label("rpc_service"), sample.label("rpc_method")) else {
            continue;
        };
        let key = MethodKey { side: side.into(), service: service.into(), method: method.into() };
        let entry = out.entry(key).or_default();
        match what {
            "count" => {
                let status = sample.label("rpc_response_status_code").unwrap_or("OK").to_owned();
                *entry.by_status.entry(status).or_default() += sample.value;
            }
            "bucket" => {
                let le = match sample.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *entry.buckets.entry(Bound(le)).or_default() += sample.value;
            }
            _ => {}
        }
    }
    out
}

/// `now - before`; a counter that went down restarted, so all of `now` is new.
fn delta(now: &Totals, before: &Totals) -> Totals {
    let restarted = now.by_status.iter().any(|(k, v)| *v < before.by_status.get(k).copied().unwrap_or(0.0));
    if restarted {
        return now.clone();
    }
    Totals { by_status: minus(&now.by_status, &before.by_status), buckets: minus(&now.buckets, &before.buckets) }
}

fn minus<K: Ord + Clone>(now: &BTreeMap<K, f64>, before: &BTreeMap<K, f64>) -> BTreeMap<K, f64> {
    now.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}

fn add(into: &mut Totals, more: &Totals) {
    for (k, v) in &more.by_status {
        *into.by_status.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &more.buckets {
        *into.buckets.entry(*k).or_default() += v;
    }
}

/// The `q` quantile of cumulative buckets, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; one in the `+Inf` bucket is the largest finite bound.
fn quantile(buckets: &BTreeMap<Bound, f64>, q: f64) -> Option<f64> {
    let total = buckets.get(&Bound(f64::INFINITY)).copied().or_else(|| buckets.values().last().copied())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (Bound(le), count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            return Some(if inside > 0.0 { lower + (le - lower) * (rank - below) / inside } else { *le });
        }
        (lower, below) = (*le, *count);
    }
    Some(lower)
}

/// One second (or so) of a method's calls.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Point {
    /// Unix time, seconds.
    pub(crate) t: f64,
    /// Calls finished per second.
    pub(crate) rate: f64,
    /// Share that succeeded; none without calls.
    pub(crate) success: Option<f64>,
    /// Latency quantiles in seconds; none without calls.
    pub(crate) p50: Option<f64>,
    pub(crate) p95: Option<f64>,
    pub(crate) p99: Option<f64>,
}

fn point(t: f64, elapsed: f64, d: &Totals) -> Point {
    let calls = d.by_status.values().fold(0.0, |sum, n| sum + n);
    let ok = d.by_status.get("OK").copied().unwrap_or(0.0);
    let some = calls > 0.0;
    Point {
        t,
        rate: if elapsed > 0.0 { calls / elapsed } else { 0.0 },
        success: some.then(|| ok / calls),
        p50: some.then(|| quantile(&d.buckets, 0.5)).flatten(),
        p95: some.then(|| quantile(&d.buckets, 0.95)).flatten(),
        p99: some.then(|| quantile(&d.buckets, 0.99)).flatten(),
    }
}

/// A process the dashboard scrapes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// Its name in the topology: the registry service it is an instance of, or its address.
    pub(crate) name: String,
    /// Its admin port.
    pub(crate) admin: String,
}

/// An endpoint's circuit as a client of it reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Breaker {
    pub(crate) client: String,
    pub(crate) target: String,
    pub(crate) endpoint: String,
    pub(crate) state: String,
}

/// Calls per second from one service to another.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) rate: f64,
}

/// What an alert watches.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Signal {
    /// Share of calls that failed.
    ErrorRate,
    /// 99th percentile latency, seconds.
    P99,
}

/// An alert on one method's calls: it fires when a signal stays above a threshold for a while,
/// and resolves when it drops below. Written `error_rate>0.05:10s` or `p99>0.25:30s` (seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    signal: Signal,
    threshold: f64,
    /// Seconds the signal must stay above the threshold.
    hold: f64,
}

impl AlertRule {
    /// Fires when more than `share` (0 to 1) of the calls fail for `hold`.
    pub fn error_rate(share: f64, hold: std::time::Duration) -> AlertRule {
        AlertRule { signal: Signal::ErrorRate, threshold: share, hold: hold.as_secs_f64() }
    }

    /// Fires when the 99th percentile latency exceeds `latency` for `hold`.
    pub fn p99(latency: std::time::Duration, hold: std::time::Duration) -> AlertRule {
        AlertRule { signal: Signal::P99, threshold: latency.as_secs_f64(), hold: hold.as_secs_f64() }
    }

    /// Reads `error_rate>0.05:10s` or `p99>0.25:30s` (the latency in seconds).
    pub fn parse(spec: &str) -> Result<AlertRule, String> {
        let bad = || format!("{spec:?} is not a rule; write error_rate>0.05:10s or p99>0.25:30s (p99 in seconds)");
        let (signal, rest) = spec.split_once('>').ok_or_else(bad)?;
        let (threshold, hold) = rest.split_once(':').ok_or_else(bad)?;
        let signal = match signal.trim() {
            "error_rate" => Signal::ErrorRate,
            "p99" => Signal::P99,
            _ => return Err(bad()),
        };
        let threshold = threshold.trim().parse().map_err(|_| bad())?;
        let hold = hold.trim().strip_suffix('s').ok_or_else(bad)?.parse().map_err(|_| bad())?;
        Ok(AlertRule { signal, threshold, hold })
    }

    fn value(&self, point: &Point) -> Option<f64> {
        match self.signal {
            Signal::ErrorRate => point.success.map(|s| 1.0 - s),
            Signal::P99 => point.p99,
        }
    }
}

impl fmt::Display for AlertRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signal = match self.signal {
            Signal::ErrorRate => "error_rate",
            Signal::P99 => "p99",
        };
        write!(f, "{signal}>{}:{}s", self.threshold, self.hold)
    }
}

/// An alert that fired or resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct AlertEvent {
    pub(crate) t: f64,
    pub(crate) rule: String,
    pub(crate) method: MethodKey,
    pub(crate) firing: bool,
    pub(crate) value: f64,
}

#[derive(Clone, Copy, Debug)]
enum AlertState {
    /// Over the threshold since `since`, not yet for long enough.
    Pending {
        since: f64,
    },
    Firing {
        since: f64,
    },
}

/// How many points of each method are kept (one per scrape).
const HISTORY: usize = 300;
/// How many alert events are kept for the page.
const RECENT_ALERTS: usize = 50;

/// Everything the dashboard has seen.
pub(crate) struct Model {
    rules: Vec<AlertRule>,
    last: HashMap<(Target, MethodKey), Totals>,
    series: BTreeMap<MethodKey, VecDeque<Point>>,
    pub(crate) breakers: Vec<Breaker>,
    pub(crate) edges: Vec<Edge>,
    alerts: HashMap<(usize, MethodKey), AlertState>,
    recent: VecDeque<AlertEvent>,
}

/// A firing alert, for the page.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Firing {
    pub(crate) rule: String,
    pub(crate) method: MethodKey,
    pub(crate) since: f64,
}

impl Model {
    pub(crate) fn new(rules: Vec<AlertRule>) -> Model {
        Model {
            rules,
            last: HashMap::new(),
            series: BTreeMap::new(),
            breakers: Vec::new(),
            edges: Vec::new(),
            alerts: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    /// Takes one round of scrapes made `elapsed` seconds after the last, at unix time `t`
    /// (`None`: the target did not answer); answers the alerts that fired or resolved.
    pub(crate) fn observe(
        &mut self,
        t: f64,
        elapsed: f64,
        scrapes: &[(Target, Option<Vec<Sample>>)],
    ) -> Vec<AlertEvent> {
        let mut round: BTreeMap<MethodKey, Totals> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut last = HashMap::new();
        self.breakers.clear();
        for (target, samples) in scrapes {
            let Some(samples) = samples else {
                // A scrape that failed once must not reset the target's baseline: its next
                // answer counts from the last one.
                last.extend(self.last.iter().filter(|((t, _), _)| t == target).map(|(k, v)| (k.clone(), v.clone())));
                continue;
            };
            for (key, now) in totals(samples) {
                let id = (target.clone(), key.clone());
                // A target seen for the first time says nothing about when its calls happened.
                if let Some(before) = self.last.get(&id) {
                    let d = delta(&now, before);
                    if key.side == "client" {
                        let calls: f64 = d.by_status.values().sum();
                        *edges.entry((target.name.clone(), key.service.clone())).or_default() += calls;
                    }
                    add(round.entry(key.clone()).or_default(), &d);
                } else {
                    round.entry(key.clone()).or_default();
                }
                last.insert(id, now);
            }
            for s in samples.iter().filter(|s| s.name == "rpc_lb_breaker_state" && s.value == 1.0) {
                if let (Some(to), Some(endpoint), Some(state)) =
                    (s.label("target"), s.label("endpoint"), s.label("state"))
                {
                    self.breakers.push(Breaker {
                        client: target.name.clone(),
                        target: to.into(),
                        endpoint: endpoint.into(),
                        state: state.into(),
                    });
                }
            }
        }
        // Targets no longer listed (an instance that died) are forgotten; their series stay,
        // at zero.
        self.last = last;
        for key in self.series.keys() {
            round.entry(key.clone()).or_default();
        }
        let mut events = Vec::new();
        for (key, d) in round {
            let point = point(t, elapsed, &d);
            let series = self.series.entry(key.clone()).or_default();
            if series.len() == HISTORY {
                series.pop_front();
            }
            series.push_back(point);
            events.extend(self.evaluate(&key, &point));
        }
        self.edges = edges
            .into_iter()
            .map(|((from, to), calls)| Edge { from, to, rate: if elapsed > 0.0 { calls / elapsed } else { 0.0 } })
            .collect();
        for event in &events {
            if self.recent.len() == RECENT_ALERTS {
                self.recent.pop_front();
            }
            self.recent.push_back(event.clone());
        }
        events
    }

    fn evaluate(&mut self, key: &MethodKey, point: &Point) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let id = (i, key.clone());
            let value = rule.value(point);
            let over = value.is_some_and(|v| v > rule.threshold);
            match (self.alerts.get(&id).copied(), over) {
                (None, true) => {
                    self.alerts.insert(id.clone(), AlertState::Pending { since: point.t });
                }
                (Some(AlertState::Pending { .. }), false) => {
                    self.alerts.remove(&id);
                }
                (Some(AlertState::Firing { .. }), false) => {
                    self.alerts.remove(&id);
                    let value = value.unwrap_or(0.0);
                    events.push(AlertEvent {
                        t: point.t,
                        rule: rule.to_string(),
                        method: key.clone(),
                        firing: false,
                        value,
                    });
                }
                _ => {}
            }
            if let (Some(AlertState::Pending { since }), Some(value)) = (self.alerts.get(&id).copied(), value) {
                if over && point.t - since >= rule.hold {
                    self.alerts.insert(id, AlertState::Firing { since });
                    events.push(AlertEvent {
                        t: point.t,
                        rule: rule.to_string(),
                        method: key.clone(),
                        firing: true,
                        value,
                    });
                }
            }
        }
        events
    }

    /// Every method's points, oldest first.
    pub(crate) fn series(&self) -> impl Iterator<Item = (&MethodKey, &VecDeque<Point>)> {
        self.series.iter()
    }

    /// Alerts firing now.
    pub(crate) fn firing(&self) -> Vec<Firing> {
        let mut firing: Vec<Firing> = self
            .alerts
            .iter()
            .filter_map(|((rule, method), state)| match state {
                AlertState::Firing { since } => {
                    Some(Firing { rule: self.rules[*rule].to_string(), method: method.clone(), since: *since })
                }
                AlertState::Pending { .. } => None,
            })
            .collect();
        firing.sort_by(|a, b| (&a.method, &a.rule).cmp(&(&b.method, &b.rule)));
        firing
    }

    /// Alerts that fired or resolved lately, oldest first.
    pub(crate) fn recent_alerts(&self) -> impl Iterator<Item = &AlertEvent> {
        self.recent.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(ok: u64, failed: u64, fast: u64) -> Vec<Sample> {
        // `fast` of the OK calls took under 1 ms, the rest under 100 ms; failures took 1 s.
        let labels = r#"rpc_system="rpc",rpc_service="Products",rpc_method="price""#;
        let text = format!(
            "# TYPE rpc_server_call_duration_seconds histogram\n\
             rpc_server_call_duration_seconds_bucket{{{labels},rpc_response_status_code=\"OK\",le=\"0.001\"}} {fast}\n\
             rpc_server_call_duration_seconds_bucket{{{labels},rpc_response_status_code=\"OK\",le=\"0.1\"}} {ok}\n\
             rpc_server_call_duration_seconds_bucket{{{labels},rpc_response_status_code=\"OK\",le=\"+Inf\"}} {ok}\n\
             rpc_server_call_duration_seconds_count{{{labels},rpc_response_status_code=\"OK\"}} {ok}\n\
             rpc_server_call_duration_seconds_bucket{{{labels},rpc_response_status_code=\"UNAVAILABLE\",le=\"0.001\"}} 0\n\
             rpc_server_call_duration_seconds_bucket{{{labels},rpc_response_status_code=\"UNAVAILABLE\",le=\"0.1\"}} 0\n\
             rpc_server_call_duration_seconds_bucket{{{labels},rpc_response_status_code=\"UNAVAILABLE\",le=\"+Inf\"}} {failed}\n\
             rpc_server_call_duration_seconds_count{{{labels},rpc_response_status_code=\"UNAVAILABLE\"}} {failed}\n\
             rpc_lb_breaker_state{{target=\"products\",endpoint=\"10.0.0.1:7\",state=\"open\"}} 1\n\
             rpc_lb_breaker_state{{target=\"products\",endpoint=\"10.0.0.1:7\",state=\"closed\"}} 0\n"
        );
        parse(&text)
    }

    fn target() -> Target {
        Target { name: "products".into(), admin: "127.0.0.1:1".into() }
    }

    #[test]
    fn labels_with_escapes_and_commas_parse() {
        let samples = parse("# HELP x\nx{a=\"1,2\",b=\"say \\\"hi\\\"\\n\"} 3.5\nplain 7\nbroken{a=\"1\" nope\n");
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert_eq!(samples[0].label("a"), Some("1,2"));
        assert_eq!(samples[0].label("b"), Some("say \"hi\"\n"));
        assert_eq!(samples[0].value, 3.5);
        assert_eq!(samples[1], Sample { name: "plain".into(), labels: vec![], value: 7.0 });
    }

    #[test]
    fn rates_success_and_quantiles_come_from_the_change_between_scrapes() {
        let mut model = Model::new(Vec::new());
        model.observe(100.0, 1.0, &[(target(), Some(scrape(100, 0, 50)))]);
        model.observe(102.0, 2.0, &[(target(), Some(scrape(180, 20, 90)))]);
        let (_, points) = model.series().next().unwrap();
        let last = points.back().unwrap();
        // 80 OK and 20 failed in 2 s.
        assert_eq!(last.rate, 50.0);
        assert_eq!(last.success, Some(0.8));
        // 40 of 100 under 1 ms, 80 under 100 ms: the median is in the second bucket.
        let p50 = last.p50.unwrap();
        assert!(p50 > 0.001 && p50 < 0.1, "{p50}");
        // The slowest fifth is past the last finite bound.
        assert_eq!(last.p99, Some(0.1));
        assert_eq!(model.breakers[0].state, "open");
    }

    #[test]
    fn a_restarted_target_counts_from_zero() {
        let mut model = Model::new(Vec::new());
        model.observe(0.0, 1.0, &[(target(), Some(scrape(1000, 0, 0)))]);
        model.observe(1.0, 1.0, &[(target(), Some(scrape(10, 0, 0)))]);
        assert_eq!(model.series().next().unwrap().1.back().unwrap().rate, 10.0);
    }

    #[test]
    fn an_alert_fires_after_its_hold_and_resolves() {
        let rule = AlertRule::parse("error_rate>0.1:2s").unwrap();
        assert_eq!(rule.to_string(), "error_rate>0.1:2s");
        let mut model = Model::new(vec![rule]);
        let (mut ok, mut failed) = (0, 0);
        let mut fired = Vec::new();
        for t in 0..8 {
            // Half the calls fail from t=1 to t=5.
            let failing = (1..=5).contains(&t);
            ok += 10;
            failed += if failing { 10 } else { 0 };
            fired.extend(model.observe(f64::from(t), 1.0, &[(target(), Some(scrape(ok, failed, 0)))]));
            if t == 4 {
                assert_eq!(model.firing().len(), 1, "firing after being over for 2 s");
            }
        }
        let states: Vec<(f64, bool)> = fired.iter().map(|e| (e.t, e.firing)).collect();
        assert_eq!(states, [(3.0, true), (6.0, false)]);
        assert!(model.firing().is_empty());
        assert!(AlertRule::parse("p99>0.5").is_err());
    }
}
