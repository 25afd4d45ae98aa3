//! Interop with the reference implementations: the schema we emit is compiled by `protoc` and
//! the Apache Thrift compiler, and Python's protobuf, thrift, msgpack and json libraries read
//! what our codecs write and write what our codecs read (`tests/interop/check.py`).
//!
//! Needs `python3` with the `google.protobuf`, `thrift` and `msgpack` modules, `protoc` and
//! `thrift` (`.ci/run` installs them). Without them the test says so and passes, unless `CI` is
//! set, where a missing tool fails it.

mod common;

use bytes::BytesMut;
use common::messages::{Level, Point, Shape};
use rpc_core::{Codec, Idl};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every supported field type, with negative, extreme, empty and absent values.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub flag: bool,
    pub small: i8,
    pub medium: i16,
    pub number: i32,
    pub big: i64,
    pub octet: u8,
    pub word: u16,
    pub count: u32,
    pub huge: u64,
    pub ratio: f32,
    pub precise: f64,
    pub text: String,
    pub blob: Vec<u8>,
    pub numbers: Vec<i64>,
    pub names: Vec<String>,
    pub points: Vec<Point>,
    pub by_name: HashMap<String, i32>,
    pub by_id: BTreeMap<u32, Point>,
    pub maybe: Option<i32>,
    pub maybe_text: Option<String>,
    pub origin: Point,
    pub level: Level,
    pub shape: Shape,
    pub shapes: Vec<Shape>,
    pub shared_bytes: bytes::Bytes,
    pub blob_list: Vec<Vec<u8>>,
    pub no_numbers: Vec<i32>,
    pub no_entries: BTreeMap<String, i64>,
    pub maybe_point: Option<Point>,
    pub maybe_blob: Option<Vec<u8>>,
}

fn sample() -> Sample {
    Sample {
        flag: true,
        small: -8,
        medium: i16::MIN,
        number: -1,
        big: i64::MIN,
        octet: u8::MAX,
        word: u16::MAX,
        count: u32::MAX,
        huge: u64::MAX,
        ratio: -1.5,
        precise: 3.25,
        text: "ünïcode ✓".into(),
        blob: vec![0, 1, 255],
        numbers: vec![-1, 0, 1, i64::MAX],
        names: vec!["a".into(), String::new()],
        points: vec![Point { x: 1.0, y: -2.0 }, Point { x: 0.0, y: 0.0 }],
        by_name: [("one".to_string(), 1), ("minus".to_string(), -1)].into(),
        by_id: [(3, Point { x: 3.0, y: 3.0 })].into(),
        maybe: Some(0),
        maybe_text: None,
        origin: Point { x: 0.0, y: 0.0 },
        level: Level::Warn,
        shape: Shape::Code(0),
        shapes: vec![Shape::Label(String::new()), Shape::Circle(Point { x: 1.0, y: 0.0 })],
        shared_bytes: bytes::Bytes::from_static(&[7]),
        blob_list: vec![vec![], vec![1]],
        no_numbers: vec![],
        no_entries: BTreeMap::new(),
        maybe_point: Some(Point { x: 2.0, y: 0.0 }),
        maybe_blob: Some(vec![2]),
    }
}

/// A Python with the reference modules: the one on `PATH`, else Debian's (a pyenv or venv on
/// `PATH` does not see the modules apt installs).
fn python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import google.protobuf, thrift, msgpack"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The Python to run, if the reference tools are here; without them, fail under CI and skip
/// elsewhere.
fn tools() -> Option<&'static str> {
    let python = python();
    let mut missing: Vec<&str> = Vec::new();
    if python.is_none() {
        missing.push("python3 with google.protobuf, thrift and msgpack");
    }
    for (tool, arg) in [("protoc", "--version"), ("thrift", "--version")] {
        if !Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success()) {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return python;
    }
    let message = format!(
        "interop tools missing ({}); install protobuf-compiler python3-protobuf thrift-compiler python3-thrift python3-msgpack",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "{message}");
    println!("SKIPPED: {message}");
    None
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn workdir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rpc-interop-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn generate(dir: &Path) {
    let mut idl = Idl::new("interop");
    idl.add::<Sample>();
    std::fs::write(dir.join("interop.proto"), idl.to_proto()).unwrap();
    std::fs::write(dir.join("interop.thrift"), idl.to_thrift()).unwrap();
    run(Command::new("protoc").arg("-I").arg(dir).arg("--python_out").arg(dir).arg(dir.join("interop.proto")));
    run(Command::new("thrift").args(["--gen", "py", "-out"]).arg(dir).arg(dir.join("interop.thrift")));
}

#[test]
fn reference_implementations_read_and_write_every_codec() {
    let Some(python) = tools() else { return };
    let dir = workdir();
    generate(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/check.py");
    for &codec in Codec::ALL {
        let (ours, theirs) = (dir.join(format!("{codec}.ours")), dir.join(format!("{codec}.theirs")));
        let mut buf = BytesMut::new();
        codec.encode(&sample(), &mut buf).unwrap();
        std::fs::write(&ours, &buf).unwrap();
        run(Command::new(python).arg(&script).arg(codec.name()).arg(&dir).arg(&ours).arg(&theirs));
        let bytes = std::fs::read(&theirs).unwrap();
        let back = codec.decode::<Sample>(&bytes).unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(back, sample(), "{codec}: what the reference implementation wrote");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An account.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub id: u64,
    pub owner: String,
    pub balance: i64,
}

/// The declared error of `Bank.get`.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct NoSuchAccount {
    pub id: u64,
}

/// A service for the Thrift-on-the-wire tests.
#[rpc_core::service]
pub trait Bank {
    /// Opens an account.
    async fn open(&self, owner: String, deposit: i64) -> Account;
    /// An account, or the declared exception.
    async fn get(&self, id: u64) -> Result<Account, NoSuchAccount>;
    /// Every account: a method named with a word Thrift reserves (`list_` in the `.thrift`).
    async fn list(&self) -> Vec<Account>;
    /// The balance after taking `amount`, or why not: an error that is a plain string.
    async fn withdraw(&self, id: u64, amount: i64) -> Result<i64, String>;
    /// Does nothing.
    async fn ping(&self) -> ();
}

#[derive(Default)]
struct MyBank(std::sync::Mutex<Vec<Account>>);

impl Bank for MyBank {
    async fn open(&self, owner: String, deposit: i64) -> Account {
        let mut accounts = self.0.lock().unwrap();
        let account = Account { id: accounts.len() as u64 + 1, owner, balance: deposit };
        accounts.push(account.clone());
        account
    }
    async fn get(&self, id: u64) -> Result<Account, NoSuchAccount> {
        self.0.lock().unwrap().iter().find(|a| a.id == id).cloned().ok_or(NoSuchAccount { id })
    }
    async fn list(&self) -> Vec<Account> {
        self.0.lock().unwrap().clone()
    }
    async fn withdraw(&self, id: u64, amount: i64) -> Result<i64, String> {
        let mut accounts = self.0.lock().unwrap();
        let account = accounts.iter_mut().find(|a| a.id == id).ok_or_else(|| format!("no account {id}"))?;
        if account.balance < amount {
            return Err(format!("balance {} is less than {amount}", account.balance));
        }
        account.balance -= amount;
        Ok(account.balance)
    }
    async fn ping(&self) {}
}

/// Field and argument names that are keywords in Thrift or in the languages it generates.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Reserved {
    pub class: i32,
    pub list: Vec<String>,
    pub default: bool,
    pub end: Option<u64>,
}

/// Names that are keywords only in the languages Thrift generates: Python, Java, Go and C++.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Keywords {
    pub r#type: String,
    pub int: i32,
    pub nonlocal: bool,
    pub r#await: String,
    pub signed: i32,
    pub range: u32,
    pub answer: Answer,
}

/// Enum values named with Python's constants.
#[rpc_core::message]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    None,
    True,
    False,
}

/// A union with a variant named like the `oneof` that holds it in the `.proto`.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Value(i64),
    Text(String),
}

/// A service whose methods and arguments are named with reserved and raw words, and whose
/// errors are of every kind Thrift cannot throw as they are.
#[rpc_core::service]
pub trait Mail {
    /// Sends a message.
    async fn send(&self, from: String, print: Reserved) -> bool;
    /// A method named with a reserved word, with a raw-identifier argument.
    async fn delete(&self, r#type: String, setting: Setting) -> bool;
    /// A method and arguments named with words other languages reserve.
    async fn select(&self, r#type: String, keywords: Keywords, chan: u32) -> Answer;
    /// An error that is a C-like enum.
    async fn bounce(&self, id: u64) -> Result<(), Level>;
    /// An error that is a union.
    async fn route(&self, to: String) -> Result<String, Shape>;
    /// An error that is bytes.
    async fn check(&self) -> Result<u32, Vec<u8>>;
    /// An error that is a tuple, which is a struct and thrown as it is.
    async fn hold(&self) -> Result<u32, (String, i32)>;
    /// A stream of messages.
    async fn watch(&self, from: u64) -> rpc_core::RpcStream<Setting>;
    /// A stream of results.
    async fn audit(&self, limit: u32) -> rpc_core::RpcStream<Result<u64, String>>;
    /// A stream of plain values in.
    async fn gather(&self, ids: rpc_core::Streaming<u64>) -> u32;
    /// Streams both ways.
    async fn sync(&self, settings: rpc_core::Streaming<Setting>) -> rpc_core::RpcStream<Setting>;
}

#[test]
fn emitted_idl_with_reserved_and_raw_names_and_every_kind_of_error_compiles() {
    if tools().is_none() {
        return;
    }
    let dir = workdir();
    let idl = MailServer::<()>::INFO.idl();
    let proto = idl.to_proto();
    for rpc in [
        "rpc watch(watch_args) returns (stream Setting);",
        "rpc audit(audit_args) returns (stream audit_out);",
        "rpc gather(stream gather_in) returns (gather_result);",
        "rpc sync(stream Setting) returns (stream Setting);",
    ] {
        assert!(proto.contains(rpc), "{rpc} missing from:\n{proto}");
    }
    assert!(!idl.to_thrift().contains(" sync("), "Thrift has no streams: streaming methods are left out");
    std::fs::write(dir.join("mail.proto"), proto).unwrap();
    std::fs::write(dir.join("mail.thrift"), idl.to_thrift()).unwrap();
    run(Command::new("protoc").arg("-I").arg(&dir).arg("--python_out").arg(&dir).arg(dir.join("mail.proto")));
    let thrift = dir.join("mail.thrift");
    for lang in ["py", "java:generated_annotations=suppress", "go", "cpp"] {
        run(Command::new("thrift").args(["--gen", lang, "-out"]).arg(&dir).arg(&thrift));
    }
    // Generated code that compiles, not only a compiler that accepted the file (Go's is left
    // to `thrift` itself: no Go toolchain here).
    let headers_and_jars = [
        "/usr/include/thrift/Thrift.h",
        "/usr/include/boost/numeric/conversion/cast.hpp",
        "/usr/share/java/thrift.jar",
    ];
    let mut missing: Vec<&str> = headers_and_jars.into_iter().filter(|file| !Path::new(file).exists()).collect();
    missing.extend(["g++", "javac"].into_iter().filter(|tool| Command::new(tool).arg("--version").output().is_err()));
    if !missing.is_empty() {
        let message = format!(
            "missing {missing:?}; install g++ libthrift-dev libboost-dev libthrift-java openjdk-17-jdk-headless"
        );
        assert!(std::env::var_os("CI").is_none(), "{message}");
        println!("SKIPPED compiling generated code: {message}");
        return;
    }
    run(Command::new("python3").args(["-m", "compileall", "-q"]).arg(&dir));
    let cpp = ["Mail.cpp", "mail_types.cpp"].map(|file| dir.join(file));
    run(Command::new("g++").args(["-std=c++17", "-fsyntax-only", "-I"]).arg(&dir).args(cpp));
    let java: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "java"))
        .collect();
    assert!(!java.is_empty(), "thrift --gen java wrote no .java files");
    run(Command::new("javac")
        .args(["-nowarn", "-cp", "/usr/share/java/thrift.jar:/usr/share/java/slf4j-api.jar", "-d"])
        .arg(dir.join("java-classes"))
        .args(java));
}

fn generate_bank(dir: &Path) {
    let thrift = BankClient::<rpc_core::Channel>::INFO.idl().to_thrift();
    std::fs::write(dir.join("bank.thrift"), thrift).unwrap();
    run(Command::new("thrift").args(["--gen", "py", "-out"]).arg(dir).arg(dir.join("bank.thrift")));
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/thrift_peer.py")
}

#[tokio::test]
async fn a_stock_thrift_client_calls_our_server_on_its_usual_port() {
    let Some(python) = tools() else { return };
    let dir = workdir();
    generate_bank(&dir);
    for protocol in ["binary", "compact"] {
        let bank = BankServer::new(MyBank::default());
        let server = rpc_core::Server::builder().add_service(bank).start("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().port().to_string();
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(peer_script()).args(["client"]).arg(&dir).args([port.as_str(), protocol]);
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "{protocol}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Our own protocol still works on the same port and sees what the Thrift client did.
        let client = BankClient::new(rpc_core::Channel::connect(server.local_addr().to_string()).await.unwrap());
        assert_eq!(client.get(1).await.unwrap().unwrap(), Account { id: 1, owner: "ada".into(), balance: 2 });
        server.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_stock_thrift_client_calls_our_server_over_tls() {
    let Some(python) = tools() else { return };
    let dir = workdir();
    generate_bank(&dir);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Names of their own: OpenSSL takes a certificate whose issuer is its own subject for a
    // self-signed one.
    ca.distinguished_name.push(rcgen::DnType::CommonName, "interop CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let tls = rpc_core::tls::ServerTls::builder(dir.join("server.pem"), dir.join("server.key")).build().unwrap();
    let bank = BankServer::new(MyBank::default());
    let server = rpc_core::Server::builder().tls(tls).add_service(bank).start("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().port().to_string();
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(peer_script()).args(["client"]).arg(&dir).args([port.as_str(), "binary"]).arg(dir.join("ca.pem"));
    let out = cmd.output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.trim() == "ok", "{stdout}{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn our_client_calls_a_stock_thrift_server() {
    let Some(python) = tools() else { return };
    let dir = workdir();
    generate_bank(&dir);
    for (protocol, codec) in [("binary", Codec::ThriftBinary), ("compact", Codec::ThriftCompact)] {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = tokio::process::Command::new(python)
            .arg(peer_script())
            .arg("server")
            .arg(&dir)
            .args([port.to_string().as_str(), protocol])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The server binds after it starts; retry until it accepts, for a few seconds at most.
        let mut channel = None;
        for _ in 0..100 {
            match rpc_core::ThriftChannel::connect(("127.0.0.1", port), codec).await {
                Ok(c) => {
                    channel = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let channel = channel.unwrap_or_else(|| panic!("the Python {protocol} server did not start"));
        let client = BankClient::new(channel.clone());
        let account = client.open("ada".into(), -5).await.unwrap();
        assert_eq!(account, Account { id: 1, owner: "ada".into(), balance: -5 }, "{protocol}");
        assert_eq!(client.get(1).await.unwrap(), Ok(account), "{protocol}");
        assert_eq!(client.get(999).await.unwrap(), Err(NoSuchAccount { id: 999 }), "{protocol}");
        assert_eq!(client.withdraw(1, 3).await.unwrap(), Err("balance -5 is less than 3".into()), "{protocol}");
        assert_eq!(client.withdraw(1, -7).await.unwrap(), Ok(2), "{protocol}");
        assert_eq!(client.list().await.unwrap(), [Account { id: 1, owner: "ada".into(), balance: 2 }], "{protocol}");
        client.ping().await.unwrap();
        let unknown = rpc_core::Call::<_, ()>::new(channel, rpc_core::Request::new("Bank", "nope", ())).await;
        assert_eq!(unknown.unwrap_err().code(), rpc_core::Code::Unimplemented, "{protocol}");
        child.kill().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
