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
    let deadline_seen = out.split("audit keyboard: caller's deadline in ").nth(1).and_then(|rest| rest.chars().next());
    assert!(deadline_seen.is_some_and(|c| c.is_ascii_digit()), "the deadline reached the inventory service: {out}");
    assert!(out.contains("audit cancelled"), "the inventory service stopped the audit: {out}");
    assert!(out.contains("(found by name)"), "instances were discovered through the registry: {out}");
    assert!(out.contains("(20% off) (the new value arrived"), "the config change reached the service: {out}");
    assert!(out.contains("is the new leader after"), "the registry elected a new leader: {out}");
    assert!(out.contains("(worker-1's lease expired) with fencing token"), "the lock passed on: {out}");
    assert!(out.contains("done"), "{out}");
}

#[test]
fn bench_rpc_prints_one_json_object_per_scenario_and_subject() {
    let args = ["bench", "rpc", "--json", "--tls", "--metrics", "--seconds", "0.1", "--warmup", "0", "--rounds", "1"];
    let (ok, out, err) = rpc(&args);
    assert!(ok, "bench failed: {err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 12, "{out}");
    for row in &rows {
        for field in ["scenario", "subject", "qps", "p50_us", "p99_us", "ratio_qps", "vs"] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        assert!(row["qps"].as_f64().unwrap() > 0.0, "{row}");
        // Each subject's processes did work over its calls: CPU time per call, both ends.
        for field in ["server_cpu_us", "client_cpu_us", "ratio_cpu"] {
            assert!(row[field].as_f64().is_some_and(|v| v > 0.0), "{field} missing or zero in {row}");
        }
    }
    let subjects = |subject: &str, vs: &str| rows.iter().filter(|r| r["subject"] == subject && r["vs"] == vs).count();
    assert_eq!(subjects("raw", "raw"), 3, "a raw baseline per scenario: {out}");
    assert_eq!(subjects("rpc", "raw"), 3, "{out}");
    assert_eq!(subjects("rpc-tls", "rpc"), 3, "TLS against plain TCP per scenario: {out}");
    assert_eq!(subjects("rpc-metrics", "rpc"), 3, "metrics on against off per scenario: {out}");
}

#[test]
fn bench_registry_measures_three_members_against_three_etcd_members() {
    let args = ["bench", "registry", "--json", "--seconds", "0.2", "--watch-puts", "20"];
    let (ok, out, err) = rpc(&args);
    assert!(ok, "bench failed: {err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 7, "{out}");
    for row in &rows {
        // etcd-server is installed by .ci/run; without it the etcd column is empty and this fails.
        for field in ["rpc", "etcd", "ratio"] {
            assert!(row[field].as_f64().is_some_and(|v| v > 0.0), "{field} missing in {row}");
        }
    }
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

    let (ok, out, err) =
        rpc(&["bench", "raft", "--openraft-harness", "--json", "--seconds", "0.1", "--proposers", "1,4"]);
    assert!(ok, "bench failed: {err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "a row per proposer count: {out}");
    assert!(rows.iter().all(|r| r["harness"] == "openraft" && r["proposals_per_s"].as_f64().unwrap() > 0.0), "{out}");
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

    // By name, through the registry.
    let dir = std::env::temp_dir().join(format!("rpc-cli-call-{}", std::process::id()));
    let (member, _registration) = runtime.block_on(async {
        let member = rpc_registry::RunningMember::embedded(&dir).await.unwrap();
        let instance = rpc_registry::Instance::new("adder", &addr).zone("a").version("2.0.1");
        let registration = member.client().register(instance).await.unwrap();
        (member, registration)
    });
    let registry = member.local_addr().to_string();
    let (ok, out, err) = rpc(&["call", "adder", "Adder.add", r#"{"a": 1, "b": 2}"#, "--registry", &registry]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "3");
    let (ok, _, err) = rpc(&["call", "nobody", "Adder.add", "{}", "--registry", &registry]);
    assert!(!ok && err.contains("no instance of \"nobody\""), "{err}");
    let (ok, out, err) = rpc(&["ls", "--endpoints", &registry]);
    assert!(ok, "{err}");
    assert!(out.starts_with("adder") && out.contains(&addr) && out.contains("zone=a version=2.0.1"), "{out}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
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

#[test]
fn registry_serve_answers_kv_and_lease_commands_and_stops_cleanly_on_sigterm() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("rpc-cli-registry-{}-{nanos}", std::process::id()));
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut member = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["registry", "serve", "--name", "solo", "--listen", &addr, "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = ["--endpoints", &addr];
    let (ok, out, err) = rpc(&[&["kv", "put", "svc/a", "10.0.0.1"][..], &endpoint].concat());
    assert!(ok, "put failed: {err}");
    assert!(out.contains("OK (revision 1)"), "{out}");
    let (ok, out, err) = rpc(&[&["kv", "get", "--json", "--prefix", "svc/"][..], &endpoint].concat());
    assert!(ok, "get failed: {err}");
    let kv: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(kv["mod_revision"], 1, "{kv}");
    let claim = |owner: &str| {
        let then = format!("put jobs/owner {owner}");
        rpc(&[
            &["kv", "txn", "--if", "jobs/owner version = 0", "--then", &then, "--else", "get jobs/owner"][..],
            &endpoint,
        ]
        .concat())
    };
    let (ok, out, err) = claim("worker one");
    assert!(ok && out.starts_with("SUCCEEDED\nOK (revision 2)"), "the first claim wins: {out} {err}");
    let (ok, out, err) = claim("worker two");
    assert!(ok && out == "FAILED\njobs/owner\nworker one\n", "the second sees the owner: {out} {err}");
    let (ok, _, err) = rpc(&[&["kv", "txn", "--if", "jobs/owner ~ 1"][..], &endpoint].concat());
    assert!(!ok && err.contains("cannot read the condition"), "{err}");
    let (ok, out, err) = rpc(&[&["lease", "grant", "60"][..], &endpoint].concat());
    assert!(ok && out.starts_with("lease "), "grant failed: {out} {err}");
    let (ok, out, _) = rpc(&[&["registry", "status", "--json"][..], &endpoint].concat());
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(ok && status["leases"] == 1 && status["leader"] != 0, "{status}");

    // Configuration: set, read, refuse what is not JSON, list its history and roll back.
    let (ok, out, err) = rpc(&[&["config", "set", "orders/limits", r#"{"burst": 10}"#][..], &endpoint].concat());
    assert!(ok && out.starts_with("set orders/limits at revision "), "{out} {err}");
    let first: u64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let (ok, _, err) = rpc(&[&["config", "set", "orders/limits", "{burst"][..], &endpoint].concat());
    assert!(!ok && err.contains("is not JSON"), "a bad value is refused: {err}");
    assert!(rpc(&[&["config", "set", "orders/limits", r#"{"burst": 20}"#][..], &endpoint].concat()).0);
    let (ok, out, _) = rpc(&[&["config", "history", "orders/limits"][..], &endpoint].concat());
    assert!(ok && out.lines().count() == 2 && out.contains(r#"{"burst":20}"#), "{out}");
    let (ok, _, err) = rpc(&[&["config", "rollback", "orders/limits", &first.to_string()][..], &endpoint].concat());
    assert!(ok, "{err}");
    let (ok, out, _) = rpc(&[&["config", "get", "orders/limits"][..], &endpoint].concat());
    assert!(ok && out.trim() == r#"{"burst":10}"#, "rolled back: {out}");

    // A lock held by a command; `rpc ls` with nothing registered prints nothing.
    let (ok, _, err) =
        rpc(&[&["lock", "jobs"][..], &endpoint, &["--", "sh", "-c", "test -n \"$RPC_LOCK_TOKEN\""]].concat());
    assert!(ok, "the command ran holding the lock, with its token: {err}");
    let leads = "test -n \"$RPC_LEADER_TOKEN\"";
    let (ok, _, err) =
        rpc(&[&["elect", "scheduler", "--value", "w1"][..], &endpoint, &["--", "sh", "-c", leads]].concat());
    assert!(ok, "the command ran while leading, with the leadership's token: {err}");
    let (ok, out, _) = rpc(&[&["kv", "get", "--prefix", "elections/scheduler/"][..], &endpoint].concat());
    assert!(ok && out.trim().is_empty(), "the candidate resigned when its command ended: {out}");
    let (ok, out, _) = rpc(&[&["ls"][..], &endpoint].concat());
    assert!(ok && out.is_empty(), "{out}");
    // Killing `rpc lock` kills its command too, so it cannot run on past the lock.
    let pid_file = dir.with_extension("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut holder = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args([&["lock", "jobs"][..], &endpoint, &["--", "sh", "-c", &script]].concat())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let command_pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().filter(|p| p.ends_with('\n')) {
            break pid.trim().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the locked command never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    holder.kill().unwrap();
    holder.wait().unwrap();
    let alive = || {
        Command::new("kill").args(["-0", &command_pid]).stderr(std::process::Stdio::null()).status().unwrap().success()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive() {
        assert!(std::time::Instant::now() < deadline, "the command outlived rpc lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&pid_file);

    assert!(Command::new("kill").args(["-TERM", &member.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = member.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "the member ignored SIGTERM for 10 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(exit.success(), "the member exited with {exit}");
    let _ = std::fs::remove_dir_all(&dir);
}
