//! `rpc idl` and `rpc bench codecs`, run as a user runs them.

use std::process::Command;

fn rpc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc")).args(args).output().expect("the rpc binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn idl_prints_proto_and_thrift_for_an_example_service() {
    let (ok, out, err) = rpc(&["idl", "inventory"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("syntax = \"proto3\";"), "{out}");
    assert!(out.contains("rpc reserve(reserve_args) returns (reserve_result);"), "{out}");
    assert!(out.contains("OutOfStock error = 2;"), "{out}");
    let (ok, out, err) = rpc(&["idl", "Inventory", "--format", "thrift"]);
    assert!(ok, "{err}");
    assert!(out.contains("exception OutOfStock {"), "{out}");
    assert!(out.contains("throws (1: OutOfStock error)"), "{out}");
    let (ok, _, err) = rpc(&["idl", "Nope"]);
    assert!(!ok);
    assert!(err.contains("known: Inventory"), "{err}");
}

#[test]
fn bench_codecs_prints_one_json_object_per_codec_and_dataset_and_an_svg() {
    let svg = std::env::temp_dir().join(format!("rpc-codecs-{}.svg", std::process::id()));
    let svg_arg = svg.to_string_lossy().into_owned();
    let (ok, out, err) = rpc(&["bench", "codecs", "--json", "--millis", "1", "--rounds", "1", "--svg", &svg_arg]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4 * 5, "{out}");
    for row in &rows {
        assert!(row["bytes"].as_u64().unwrap() > 0, "{row}");
        assert!(row["encode_ns"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["direct_decode_ns"].as_f64().unwrap() > 0.0, "{row}");
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("thrift-compact decode"), "{chart}");
    let _ = std::fs::remove_file(&svg);
}

/// Whether `tool --version` runs; under CI (where `.ci/run` installs the compilers) a missing
/// one fails the test instead of skipping it.
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{tool} is missing; install protobuf-compiler and thrift-compiler"
    );
    found
}

#[test]
fn the_idl_of_every_example_service_compiles_with_protoc_and_thrift() {
    if !have("protoc") || !have("thrift") {
        println!("SKIPPED: protoc or thrift missing");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rpc-idl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for service in ["Inventory", "Orders", "Products", "Checkout", "Bench"] {
        for (format, file) in [("proto", format!("{service}.proto")), ("thrift", format!("{service}.thrift"))] {
            let (ok, out, err) = rpc(&["idl", service, "--format", format]);
            assert!(ok, "{err}");
            std::fs::write(dir.join(&file), out).unwrap();
            let compiled = if format == "proto" {
                Command::new("protoc").arg("-I").arg(&dir).arg("--python_out").arg(&dir).arg(dir.join(&file)).output()
            } else {
                Command::new("thrift").args(["--gen", "py", "-out"]).arg(&dir).arg(dir.join(&file)).output()
            };
            let compiled = compiled.unwrap();
            assert!(compiled.status.success(), "{file}: {}", String::from_utf8_lossy(&compiled.stderr));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
