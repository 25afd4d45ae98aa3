//! Latency recording and the table / JSON-lines output of the benchmarks.

use std::time::Duration;

/// Latencies of one run, in microseconds.
#[derive(Default)]
pub(crate) struct Latencies(Vec<u32>);

impl Latencies {
    pub(crate) fn record(&mut self, d: Duration) {
        self.0.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub(crate) fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q`-quantile (0..=1).
    pub(crate) fn quantile(&mut self, q: f64) -> u32 {
        quantile(&mut self.0, q)
    }
}

/// The `q`-quantile (0..=1) of `values` (0 when empty); sorts them, which is fine for a report.
pub(crate) fn quantile<T: Copy + Default + PartialOrd>(values: &mut [T], q: f64) -> T {
    if values.is_empty() {
        return T::default();
    }
    values.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// How long and how often a call benchmark measures, and how it prints.
#[derive(clap::Args)]
pub(crate) struct RoundArgs {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Seconds measured per scenario, subject and round.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) seconds: f64,
    /// Rounds per scenario. A round runs every subject back to back, in reverse order every
    /// other round; a ratio is the median of the rounds' ratios and calls/s the median round,
    /// so a burst of load from elsewhere on the machine skews one round, not the result.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 0.2)]
    pub(crate) warmup: f64,
}

/// One line of an RPC benchmark report.
#[derive(serde::Serialize)]
pub(crate) struct RpcRow {
    pub(crate) scenario: &'static str,
    pub(crate) subject: &'static str,
    pub(crate) qps: f64,
    pub(crate) p50_us: u32,
    pub(crate) p99_us: u32,
    /// Calls/s over those of the subject named by `vs` in the same round: the median of the
    /// rounds' ratios.
    pub(crate) ratio_qps: f64,
    /// The server process's CPU time per call, in microseconds (`null` where it cannot be read).
    pub(crate) server_cpu_us: Option<f64>,
    /// The client process's CPU time per call, in microseconds.
    pub(crate) client_cpu_us: Option<f64>,
    /// Client and server CPU time per call over the same of the subject named by `vs`: what a
    /// call costs, which holds where calls/s move with other work on the machine.
    pub(crate) ratio_cpu: Option<f64>,
    pub(crate) vs: &'static str,
}

pub(crate) fn print_rpc_rows(rows: &[RpcRow], json: bool) {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<10} {:<12} {:>10} {:>7} {:>7} {:>6} {:>7} {:>7} {:>6} {:<8}",
        "scenario", "subject", "calls/s", "p50 µs", "p99 µs", "ratio", "srv µs", "cli µs", "cpu", "vs"
    );
    let figure = |value: Option<f64>, decimals: usize| value.map_or("-".to_owned(), |v| format!("{v:.decimals$}"));
    for r in rows {
        println!(
            "{:<10} {:<12} {:>10.0} {:>7} {:>7} {:>6.2} {:>7} {:>7} {:>6} {:<8}",
            r.scenario,
            r.subject,
            r.qps,
            r.p50_us,
            r.p99_us,
            r.ratio_qps,
            figure(r.server_cpu_us, 1),
            figure(r.client_cpu_us, 1),
            figure(r.ratio_cpu, 2),
            r.vs
        );
    }
}
