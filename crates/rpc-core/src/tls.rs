//! TLS 1.3 for servers and channels, with rustls and its `ring` provider (Cargo feature `tls`).
//!
//! Certificates and keys come from PEM files. A server's own certificate (and a client's, for
//! mutual TLS) is read again when its files change, checked at most once per
//! [`RELOAD_CHECK`], so a renewed certificate is served without a restart.

use crate::PeerIdentity;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore,
};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

/// How often, at most, certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Why TLS settings could not be built.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// rustls with `ring`: `aws-lc-rs` would add post-quantum key exchange, at the cost of building
/// a whole C crypto library with every fresh build.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|e| TlsError(format!("{} is not a usable CA certificate: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key, read from PEM files and read again when they change.
#[derive(Debug)]
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Identity {
    fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let loaded = Loaded {
            key: Identity::read(cert, key)?,
            modified: (modified(cert), modified(key)),
            checked: Instant::now(),
        };
        Ok(Identity { cert: cert.to_owned(), key: key.to_owned(), loaded: Mutex::new(loaded) })
    }

    fn read(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain = certs(cert)?;
        let der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError(format!("cannot read a PEM private key from {}: {e}", key.display())))?;
        let signing = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| TlsError(format!("{} holds no usable private key: {e}", key.display())))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            TlsError(format!(
                "the key in {} does not belong to the certificate in {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
        Ok(Arc::new(certified))
    }

    /// The current certificate and key, read again first if the files changed. A file caught
    /// half-written is skipped: the last good pair is kept until the next check.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK {
            loaded.checked = Instant::now();
            let now = (modified(&self.cert), modified(&self.key));
            if now != loaded.modified {
                match Identity::read(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
                        (loaded.key, loaded.modified) = (key, now);
                    }
                    Err(e) => tracing::warn!(error = %e, "certificate files changed but cannot be used yet"),
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server's TLS settings; see [`ServerBuilder::tls`](crate::ServerBuilder::tls).
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) plaintext: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("plaintext", &self.plaintext).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS with the certificate chain in `cert` and its private key in `key` (PEM files).
    pub fn builder(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> ServerTlsBuilder {
        ServerTlsBuilder {
            cert: cert.as_ref().to_owned(),
            key: key.as_ref().to_owned(),
            client_ca: None,
            optional_client_cert: false,
            plaintext: false,
        }
    }
}

/// Builds [`ServerTls`].
#[derive(Debug)]
pub struct ServerTlsBuilder {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    optional_client_cert: bool,
    plaintext: bool,
}

impl ServerTlsBuilder {
    /// Mutual TLS: clients must present a certificate issued by a CA in `ca` (a PEM file).
    /// Handlers see who they are in [`Context::peer_identity`](crate::Context::peer_identity).
    pub fn client_ca(mut self, ca: impl AsRef<Path>) -> Self {
        self.client_ca = Some(ca.as_ref().to_owned());
        self
    }

    /// With [`client_ca`](Self::client_ca): clients without a certificate are let in too,
    /// with no identity, for an authorization layer to judge.
    pub fn optional_client_cert(mut self) -> Self {
        self.optional_client_cert = true;
        self
    }

    /// Also accepts plain TCP on the same port (for a migration); by default a server with TLS
    /// refuses plain connections, telling the client to use TLS.
    pub fn allow_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// Reads the files and builds the settings.
    pub fn build(self) -> Result<ServerTls, TlsError> {
        let identity = Arc::new(Identity::load(&self.cert, &self.key)?);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
                let verifier = match self.optional_client_cert {
                    true => verifier.allow_unauthenticated(),
                    false => verifier,
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError(e.to_string()))?)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_cert_resolver(identity);
        Ok(ServerTls { config: Arc::new(config), plaintext: self.plaintext })
    }
}

/// A channel's TLS settings; see [`ChannelBuilder::tls`](crate::ChannelBuilder::tls).
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// TLS trusting the CA certificates in `ca` (a PEM file) to vouch for servers.
    pub fn builder(ca: impl AsRef<Path>) -> ClientTlsBuilder {
        ClientTlsBuilder { ca: ca.as_ref().to_owned(), identity: None, server_name: None }
    }
}

/// Builds [`ClientTls`].
#[derive(Debug)]
pub struct ClientTlsBuilder {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

impl ClientTlsBuilder {
    /// Mutual TLS: presents the certificate chain in `cert` with its key in `key` (PEM files).
    pub fn identity(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some((cert.as_ref().to_owned(), key.as_ref().to_owned()));
        self
    }

    /// The name the server's certificate must carry; by default the host of the address the
    /// channel dials.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Reads the files and builds the settings.
    pub fn build(self) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots(&self.ca)?);
        let config = match &self.identity {
            Some((cert, key)) => builder.with_client_cert_resolver(Arc::new(Identity::load(cert, key)?)),
            None => builder.with_no_client_auth(),
        };
        let server_name = self
            .server_name
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| TlsError(format!("{name:?} is not a valid server name")))
            })
            .transpose()?;
        Ok(ClientTls { config: Arc::new(config), server_name })
    }
}

/// The server name to verify when dialing `addr` (`host:port`), unless one was set.
pub(crate) fn server_name(tls: &ClientTls, addr: &str) -> Result<ServerName<'static>, String> {
    if let Some(name) = &tls.server_name {
        return Ok(name.clone());
    }
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a name a certificate can carry; set ClientTls's server_name"))
}

/// What a verified client certificate says about its holder.
pub(crate) fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    Some(PeerIdentity { common_name, dns_names, uris })
}

/// Says what to change when a handshake fails for a reason the user can fix.
pub(crate) fn explain(addr: &str, e: &std::io::Error) -> String {
    format!("TLS handshake with {addr} failed: {e}{}", hint(e))
}

/// What to change, after `; `, when TLS fails for a reason the user can fix; empty otherwise.
/// A server refuses a client's certificate after the client's side of a TLS 1.3 handshake is
/// done, so a refusal reaches the client as a failed read, not a failed handshake.
pub(crate) fn hint(e: &std::io::Error) -> &'static str {
    use rustls::AlertDescription as Alert;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) | Some(rustls::Error::InappropriateMessage { .. }) => {
            "; the server does not seem to speak TLS: drop .tls() or enable TLS on the server"
        }
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        )) => "; the server's certificate is not issued by the CA this client trusts",
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        | Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
            "; the server's certificate does not carry the name dialed: set ClientTls's server_name"
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired))
        | Some(rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })) => {
            "; the server's certificate has expired"
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) => {
            "; the server requires a client certificate: set ClientTls's identity"
        }
        Some(rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied,
        )) => "; the server refused this client's certificate: is it issued by the CA the server trusts?",
        _ if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "; the server closed the connection: it may not serve TLS, or refused this client"
        }
        _ => "",
    }
}

/// How a channel opens TLS on its connections: its settings and the name to verify.
pub(crate) struct Dial {
    connector: tokio_rustls::TlsConnector,
    name: Result<ServerName<'static>, String>,
    addr: String,
}

impl fmt::Debug for Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dial").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Dial {
    /// Dialing `addr` (`host:port`) with `tls`.
    pub(crate) fn new(tls: &ClientTls, addr: &str) -> Dial {
        Dial {
            connector: tokio_rustls::TlsConnector::from(tls.config.clone()),
            name: server_name(tls, addr),
            addr: addr.to_owned(),
        }
    }

    /// Runs the client side of the handshake on `stream`.
    pub(crate) async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, crate::Status> {
        let name = self.name.clone().map_err(|e| crate::Status::invalid_argument(e).with_not_started())?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(|e| crate::Status::unavailable(explain(&self.addr, &e)).with_not_started())
    }
}
