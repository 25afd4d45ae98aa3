//! The `rpc` binary, run as a user runs it.

use std::process::Command;

fn rpc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc")).args(args).output().expect("the rpc binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn demo_narrates_calls_errors_and_a_cascading_deadline() {
    let (ok, out, err) = rpc(&["demo"]);
    assert!(ok, "demo failed: {err}");
    assert!(out.contains("order #1 confirmed"), "{out}");
    assert!(out.contains("only 1 × keyboard available"), "{out}");
    assert!(out.contains("audit cancelled"), "the deadline reached the inventory service: {out}");
    assert!(out.contains("done"), "{out}");
}

#[test]
fn bench_rpc_prints_one_json_object_per_scenario_and_subject() {
    let (ok, out, err) = rpc(&["bench", "rpc", "--json", "--seconds", "0.1", "--warmup", "0", "--rounds", "1"]);
    assert!(ok, "bench failed: {err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6, "{out}");
    for row in &rows {
        for field in ["scenario", "subject", "qps", "p50_us", "p99_us", "ratio_qps"] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        assert!(row["qps"].as_f64().unwrap() > 0.0, "{row}");
    }
    let raw = rows.iter().filter(|r| r["subject"] == "raw").count();
    assert_eq!(raw, 3, "a raw baseline per scenario: {out}");
}

#[test]
fn bench_raft_prints_throughput_and_failover_per_configuration() {
    let args = ["bench", "raft", "--json", "--seconds", "0.05", "--trials", "3", "--nodes", "1,3", "--proposers", "1"];
    let (ok, out, err) = rpc(&[&args[..], &["--fsync", "off"]].concat());
    assert!(ok, "bench failed: {err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0]["failover_p50_ms"].is_null(), "no failover for one node: {out}");
    assert!(rows[1]["failover_p99_ms"].as_f64().unwrap() > 0.0, "{out}");
    assert!(rows.iter().all(|r| r["proposals_per_s"].as_f64().unwrap() > 0.0), "{out}");
}

#[test]
fn call_sends_json_arguments_and_prints_the_reply() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        rpc_core::Server::builder().add_service(AdderServer::new(Plain)).start("127.0.0.1:0").await.unwrap()
    });
    let addr = server.local_addr().to_string();
    for codec in ["json", "msgpack"] {
        let (ok, out, err) = rpc(&["call", &addr, "Adder.add", r#"{"a": 40, "b": 2}"#, "--codec", codec]);
        assert!(ok, "{codec}: {err}");
        assert_eq!(out.trim(), "42", "{codec}");
    }
    let (ok, _, err) = rpc(&["call", &addr, "Adder.nope", "{}"]);
    assert!(!ok);
    assert!(err.contains("UNIMPLEMENTED"), "{err}");
    let (ok, _, err) = rpc(&["call", &addr, "Adder.add", "{not json"]);
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");
    drop(server);
}

/// Adds numbers.
#[rpc_core::service]
pub trait Adder {
    /// `a + b`.
    async fn add(&self, a: i64, b: i64) -> i64;
}

struct Plain;

impl Adder for Plain {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}
