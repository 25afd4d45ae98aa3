//! TLS, mutual TLS, authentication and access rules over real sockets, with certificates from
//! `rpc cert dev`: calls that go through, the caller's identity in the handler, each way a
//! handshake can fail with the error a user sees, and rules that allow and deny as written.

use rpc_core::{
    layer::auth::{AccessRules, AuthenticateLayer, AuthenticatorExt, AuthorizeLayer, BearerTokens, ClientCertificate},
    server::RunningServer,
    tls::{ClientTls, ServerTls},
    Channel, Code, Context, Server, Status,
};
use std::{path::PathBuf, process::Command, time::Duration};

/// Tells callers who they are.
#[rpc_core::service]
pub trait Whoami {
    /// The caller's identity as the server sees it: its certificate's common name and URIs.
    async fn whoami(&self) -> String;
    /// The principal an authentication layer established.
    async fn principal(&self) -> String;
}

struct Identify;

impl Whoami for Identify {
    async fn whoami(&self) -> String {
        match Context::current().and_then(|c| c.peer_identity().cloned()) {
            Some(id) => format!("{} {}", id.common_name.unwrap_or_default(), id.uris.join(",")),
            None => "anonymous".to_owned(),
        }
    }

    async fn principal(&self) -> String {
        Context::current().and_then(|c| c.principal().map(|p| p.name.clone())).unwrap_or_default()
    }
}

/// A fresh directory with `rpc cert dev`'s files.
struct Certs(PathBuf);

impl Certs {
    fn dev(tag: &str, client: &str) -> Certs {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("rpc-tls-{tag}-{}-{nanos}", std::process::id()));
        let out = Command::new(env!("CARGO_BIN_EXE_rpc"))
            .args(["cert", "dev", "--client", client, "--dir"])
            .arg(&dir)
            .output()
            .expect("rpc runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Certs(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn server(&self) -> rpc_core::tls::ServerTlsBuilder {
        ServerTls::builder(self.path("server.pem"), self.path("server.key"))
    }

    fn client(&self) -> rpc_core::tls::ClientTlsBuilder {
        ClientTls::builder(self.path("ca.pem"))
    }

    fn mutual(&self) -> rpc_core::tls::ClientTlsBuilder {
        self.client().identity(self.path("client.pem"), self.path("client.key"))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn serve(tls: Option<ServerTls>) -> RunningServer {
    let builder = Server::builder().add_service(WhoamiServer::new(Identify));
    let builder = match tls {
        Some(tls) => builder.tls(tls),
        None => builder,
    };
    builder.start("127.0.0.1:0").await.unwrap()
}

/// Calls `whoami` on `server` over a new channel dialing `host`.
async fn whoami(server: &RunningServer, host: &str, tls: Option<ClientTls>) -> Result<String, Status> {
    let addr = format!("{host}:{}", server.local_addr().port());
    let builder = Channel::builder(addr).connect_timeout(Duration::from_secs(5));
    let builder = match tls {
        Some(tls) => builder.tls(tls),
        None => builder,
    };
    WhoamiClient::new(builder.connect_lazy()).whoami().await
}

#[tokio::test]
async fn a_tls_call_goes_through_and_a_mutual_tls_handler_sees_the_callers_certificate() {
    let certs = Certs::dev("ok", "billing");
    let tls_only = serve(Some(certs.server().build().unwrap())).await;
    let reply = whoami(&tls_only, "localhost", Some(certs.client().build().unwrap())).await.unwrap();
    assert_eq!(reply, "anonymous", "server-only TLS proves nothing about the caller");
    // Dialed by IP address: the certificate carries 127.0.0.1 too.
    whoami(&tls_only, "127.0.0.1", Some(certs.client().build().unwrap())).await.unwrap();

    let mutual = serve(Some(certs.server().client_ca(certs.path("ca.pem")).build().unwrap())).await;
    let reply = whoami(&mutual, "localhost", Some(certs.mutual().build().unwrap())).await.unwrap();
    assert_eq!(reply, "billing spiffe://rpc.dev/billing");
}

#[tokio::test]
async fn each_failed_handshake_says_what_to_change() {
    let certs = Certs::dev("fail", "billing");
    let other = Certs::dev("other", "intruder");
    let tls_only = serve(Some(certs.server().build().unwrap())).await;

    let wrong_ca = whoami(&tls_only, "localhost", Some(other.client().build().unwrap())).await.unwrap_err();
    assert!(wrong_ca.message().contains("not issued by the CA this client trusts"), "{wrong_ca}");
    assert!(wrong_ca.not_started(), "nothing was sent, so a balancer may try elsewhere");

    let wrong_name = certs.client().server_name("orders.internal").build().unwrap();
    let wrong_name = whoami(&tls_only, "localhost", Some(wrong_name)).await.unwrap_err();
    assert!(wrong_name.message().contains("does not carry the name dialed"), "{wrong_name}");

    let plaintext = whoami(&tls_only, "localhost", None).await.unwrap_err();
    assert!(plaintext.message().contains("accepts TLS only"), "{plaintext}");

    let plain_server = serve(None).await;
    let tls_to_plain = whoami(&plain_server, "localhost", Some(certs.client().build().unwrap())).await.unwrap_err();
    assert!(tls_to_plain.message().contains("does not seem to speak TLS"), "{tls_to_plain}");

    let mutual = serve(Some(certs.server().client_ca(certs.path("ca.pem")).build().unwrap())).await;
    let no_cert = whoami(&mutual, "localhost", Some(certs.client().build().unwrap())).await.unwrap_err();
    assert!(no_cert.message().contains("requires a client certificate"), "{no_cert}");
    // A client whose certificate another CA issued (it trusts our server's CA, to isolate the
    // refusal).
    let stranger = ClientTls::builder(certs.path("ca.pem"))
        .identity(other.path("client.pem"), other.path("client.key"))
        .build()
        .unwrap();
    let refused = whoami(&mutual, "localhost", Some(stranger)).await.unwrap_err();
    assert!(refused.message().contains("refused this client's certificate"), "{refused}");
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    use rcgen::{CertificateParams, KeyPair};
    let dir = Certs::dev("expired", "billing");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    (leaf.not_before, leaf.not_after) = (rcgen::date_time_ymd(2020, 1, 1), rcgen::date_time_ymd(2021, 1, 1));
    let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.path("old-ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path("old.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path("old.key"), key.serialize_pem()).unwrap();

    let server = serve(Some(ServerTls::builder(dir.path("old.pem"), dir.path("old.key")).build().unwrap())).await;
    let expired = whoami(&server, "localhost", Some(ClientTls::builder(dir.path("old-ca.pem")).build().unwrap()))
        .await
        .unwrap_err();
    assert!(expired.message().contains("has expired"), "{expired}");
}

#[test]
fn settings_that_cannot_work_are_refused_when_built() {
    let certs = Certs::dev("settings", "billing");
    let missing = ServerTls::builder(certs.path("nope.pem"), certs.path("server.key")).build().unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let swapped = ServerTls::builder(certs.path("server.pem"), certs.path("client.key")).build().unwrap_err();
    assert!(swapped.to_string().contains("does not belong to the certificate"), "{swapped}");
    let not_a_cert = ClientTls::builder(certs.path("ca.key")).build().unwrap_err();
    assert!(not_a_cert.to_string().contains("no PEM certificate"), "{not_a_cert}");
}

#[tokio::test]
async fn rpc_call_speaks_mutual_tls_with_the_dev_certificates() {
    let certs = Certs::dev("cli", "ops");
    let server = serve(Some(certs.server().client_ca(certs.path("ca.pem")).build().unwrap())).await;
    let addr = format!("localhost:{}", server.local_addr().port());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["call", &addr, "Whoami.whoami", "--tls-ca"])
        .arg(certs.path("ca.pem"))
        .arg("--tls-cert")
        .arg(certs.path("client.pem"))
        .arg("--tls-key")
        .arg(certs.path("client.key"))
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), r#""ops spiffe://rpc.dev/ops""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_served_without_a_restart_and_no_call_fails() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let (old, new) = (Certs::dev("reload-old", "billing"), Certs::dev("reload-new", "billing"));
    let live = Certs::dev("reload-live", "billing");
    for name in ["server.pem", "server.key"] {
        std::fs::copy(old.path(name), live.path(name)).unwrap();
    }
    let both = live.path("both-cas.pem");
    let cas =
        [std::fs::read_to_string(old.path("ca.pem")).unwrap(), std::fs::read_to_string(new.path("ca.pem")).unwrap()];
    std::fs::write(&both, cas.concat()).unwrap();
    let server = Arc::new(serve(Some(live.server().build().unwrap())).await);

    // Calls on fresh connections, each with a handshake, through the renewal.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (server, stop, tls) = (server.clone(), stop.clone(), ClientTls::builder(&both).build().unwrap());
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match whoami(&server, "localhost", Some(tls.clone())).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }
    });
    let trusts_new_only = || ClientTls::builder(new.path("ca.pem")).build().unwrap();
    whoami(&server, "localhost", Some(trusts_new_only())).await.unwrap_err();

    // Renew as a deployment tool would: write aside, then rename over.
    for name in ["server.pem", "server.key"] {
        std::fs::copy(new.path(name), live.path(&format!("{name}.next"))).unwrap();
        std::fs::rename(live.path(&format!("{name}.next")), live.path(name)).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while whoami(&server, "localhost", Some(trusts_new_only())).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was never served");
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0 && failed.is_empty(), "{ok} calls went through, these failed: {failed:?}");
}

#[tokio::test]
async fn bearer_tokens_and_access_rules_allow_and_deny_as_written() {
    let tokens = BearerTokens::new().token("tok-billing", "billing").token("tok-ops", "ops");
    let rules = AccessRules::new().allow("billing", "Whoami.*").allow("ops", "Whoami.whoami");
    let server = Server::builder()
        .layer(AuthenticateLayer::new(tokens))
        .layer(AuthorizeLayer::new(rules))
        .add_service(WhoamiServer::new(Identify))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let client = |token: Option<&str>| {
        let builder = Channel::builder(server.local_addr().to_string());
        let builder = match token {
            Some(token) => builder.bearer_token(token),
            None => builder,
        };
        WhoamiClient::new(builder.connect_lazy())
    };

    assert_eq!(client(Some("tok-billing")).principal().await.unwrap(), "billing", "the handler sees the principal");
    client(Some("tok-ops")).whoami().await.unwrap();
    let denied = client(Some("tok-ops")).principal().await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "ops may not call Whoami.principal");
    assert!(denied.not_started(), "refused before any handler ran");

    let missing = client(None).whoami().await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("bearer token"), "{missing}");
    let wrong = client(Some("tok-guess")).whoami().await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(!wrong.message().contains("tok-guess"), "a refusal must not echo the credential: {wrong}");
}

#[tokio::test]
async fn a_client_certificate_or_else_a_token_names_the_principal_the_rules_judge() {
    let certs = Certs::dev("principal", "billing");
    let tls = certs.server().client_ca(certs.path("ca.pem")).optional_client_cert().build().unwrap();
    let rules = AccessRules::new().allow("spiffe://rpc.dev/billing", "Whoami.*").allow("ops", "Whoami.whoami");
    let server = Server::builder()
        .tls(tls)
        .layer(AuthenticateLayer::new(ClientCertificate.or(BearerTokens::new().token("tok-ops", "ops"))))
        .layer(AuthorizeLayer::new(rules))
        .add_service(WhoamiServer::new(Identify))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let addr = format!("localhost:{}", server.local_addr().port());
    let with_cert = WhoamiClient::new(Channel::builder(&addr).tls(certs.mutual().build().unwrap()).connect_lazy());
    assert_eq!(with_cert.principal().await.unwrap(), "spiffe://rpc.dev/billing");

    let token_only = Channel::builder(&addr).tls(certs.client().build().unwrap()).bearer_token("tok-ops");
    let token_only = WhoamiClient::new(token_only.connect_lazy());
    token_only.whoami().await.expect("without a certificate, the token names the caller");
    assert_eq!(token_only.principal().await.unwrap_err().code(), Code::PermissionDenied);

    let nobody = WhoamiClient::new(Channel::builder(&addr).tls(certs.client().build().unwrap()).connect_lazy());
    assert_eq!(nobody.whoami().await.unwrap_err().code(), Code::Unauthenticated);
}

mod registry {
    use super::*;
    use futures_util::StreamExt;
    use rpc_registry::{
        api::{prefix_end, PutRequest, RequestOp, TxnRequest, WatchCreate},
        AuthConfig, ClientError, ErrorCode, MemberConfig, RegistryClient, RunningMember,
    };

    fn denied<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
        match result {
            Err(ClientError::Registry(e)) if e.code == ErrorCode::PermissionDenied => e.message,
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roles_on_key_prefixes_allow_and_deny_get_put_txn_watch_lease_and_admin_calls() {
        let dir = Certs::dev("rbac", "unused");
        let auth: AuthConfig = serde_json::from_str(
            r#"{"users": [{"name": "root", "token": "root-t", "roles": ["root"]},
                          {"name": "svc", "token": "svc-t", "roles": ["services"]}],
                "roles": [{"name": "root", "permissions": [{"prefix": "", "access": "admin"}]},
                          {"name": "services", "permissions": [{"prefix": "services/", "access": "write"},
                                                               {"prefix": "config/", "access": "read"}]}]}"#,
        )
        .unwrap();
        let mut config = MemberConfig::new("solo", dir.path("solo"), "127.0.0.1:0");
        (config.fsync, config.auth) = (false, Some(auth));
        let member = RunningMember::start(config).await.unwrap();
        let addr = member.local_addr().to_string();
        let as_user = |token: &str| RegistryClient::builder([addr.clone()]).token(token).build();
        let (root, svc) = (as_user("root-t"), as_user("svc-t"));

        root.put("config/limits", "1").await.unwrap();
        root.put("secrets/db", "hunter2").await.unwrap();
        svc.put("services/orders/10.0.0.1:7001", "{}").await.unwrap();
        assert_eq!(svc.get("config/limits").await.unwrap().unwrap().value, b"1");
        assert_eq!(denied(svc.put("config/limits", "2").await), r#"svc may not write key "config/limits""#);
        assert!(denied(svc.get("secrets/db").await).contains("may not read"));
        let everything = rpc_registry::api::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        denied(svc.range(everything).await);

        // A transaction needs every permission either branch would use.
        let put =
            |key: &str| RequestOp::Put(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() });
        let allowed =
            TxnRequest { success: vec![put("services/a")], failure: vec![put("services/b")], ..Default::default() };
        svc.txn(allowed).await.unwrap();
        let sneaky =
            TxnRequest { success: vec![put("services/a")], failure: vec![put("config/limits")], ..Default::default() };
        denied(svc.txn(sneaky).await);

        // Watches are checked when created.
        let watch = |prefix: &str| WatchCreate {
            key: prefix.into(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        let mut secrets = svc.watch(watch("secrets/"));
        match secrets.next().await {
            Some(Err(ClientError::Registry(e))) if e.code == ErrorCode::PermissionDenied => {}
            other => panic!("a watch on keys the caller may not read must be refused: {other:?}"),
        }
        let put = svc.put("services/orders/10.0.0.2:7001", "{}").await.unwrap();
        let mut services = svc.watch(WatchCreate { start_revision: put.header.revision, ..watch("services/") });
        let events = services.next().await.unwrap().unwrap().events;
        assert_eq!(events[0].kv.key, b"services/orders/10.0.0.2:7001");

        // Revoking a lease deletes its keys: only who may delete them may revoke it.
        let lease = root.lease_grant(60).await.unwrap();
        root.put_with(PutRequest { key: b"config/flag".to_vec(), lease, ..Default::default() }).await.unwrap();
        denied(svc.lease_revoke(lease).await);
        root.lease_revoke(lease).await.unwrap();

        // Cluster operations are for admins of every key.
        denied(svc.member_remove(rpc_registry::member_id("solo")).await);
        denied(svc.move_leader(1).await);

        for client in [RegistryClient::connect([addr.clone()]), as_user("guessed")] {
            match client.get("config/limits").await {
                Err(ClientError::Refused(status)) => {
                    assert_eq!(status.code(), Code::Unauthenticated);
                    assert!(!status.message().contains("guessed"), "{status}");
                }
                other => panic!("a caller without valid credentials must be refused: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_three_member_registry_runs_over_mutual_tls_and_serves_only_tls_clients() {
        let certs = Certs::dev("cluster", "ops");
        let ports: Vec<String> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string())
            .collect();
        let peers: Vec<(String, String)> =
            ports.iter().enumerate().map(|(i, a)| (format!("n{i}"), a.clone())).collect();
        let mut members = Vec::new();
        for (name, addr) in &peers {
            let mut config = MemberConfig::new(name, certs.path(name), addr);
            (config.fsync, config.peers) = (false, peers.clone());
            config.tls = Some(rpc_registry::MemberTls {
                server: certs.server().client_ca(certs.path("ca.pem")).optional_client_cert().build().unwrap(),
                peer: certs.client().identity(certs.path("server.pem"), certs.path("server.key")).build().unwrap(),
            });
            members.push(RunningMember::start(config).await.unwrap());
        }
        let tls = RegistryClient::builder(ports.clone()).tls(certs.client().build().unwrap()).build();
        // A write needs a leader, elected over member traffic that is TLS with certificates.
        tls.put("services/orders/a", "1").await.unwrap();
        assert_eq!(tls.status().await.unwrap().members.len(), 3);
        let plain = RegistryClient::connect(ports.clone());
        let refused = plain.get("services/orders/a").await.unwrap_err();
        assert!(refused.to_string().contains("accepts TLS only"), "{refused}");
    }
}

#[tokio::test]
async fn rpc_registry_serve_with_tls_and_auth_answers_only_clients_with_both() {
    use tokio::io::AsyncBufReadExt;
    let certs = Certs::dev("serve", "ops");
    let auth = certs.path("auth.json");
    std::fs::write(
        &auth,
        r#"{"users": [{"name": "ops", "token": "ops-t", "roles": ["ops"]}],
            "roles": [{"name": "ops", "permissions": [{"prefix": "jobs/", "access": "write"}]}]}"#,
    )
    .unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let path = |name: &str| certs.path(name).display().to_string();
    let mut member = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["registry", "serve", "--no-fsync", "--listen", &listen, "--data-dir", &path("data")])
        .args(["--auth", &path("auth.json"), "--tls-cert", &path("server.pem"), "--tls-key", &path("server.key")])
        .args(["--tls-ca", &path("ca.pem")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut serving = String::new();
    tokio::io::BufReader::new(member.stdout.take().unwrap()).read_line(&mut serving).await.unwrap();
    assert!(serving.contains("serving on"), "{serving}");

    let kv = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpc"));
        command.arg("kv").args(args).args(["--endpoints", &listen]);
        command
    };
    let ca = path("ca.pem");
    let out = kv(&["put", "jobs/nightly", "on", "--tls-ca", &ca]).env("RPC_TOKEN", "ops-t").output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kv(&["put", "config/x", "1", "--tls-ca", &ca, "--token", "ops-t"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ops may not write"), "{stderr}");
    let out = kv(&["get", "jobs/nightly", "--tls-ca", &ca]).env_remove("RPC_TOKEN").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let out = kv(&["get", "jobs/nightly", "--token", "ops-t"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("accepts TLS only"), "{stderr}");
}
