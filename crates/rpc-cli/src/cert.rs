//! `rpc cert dev`: a throwaway CA and certificates, to try TLS and mutual TLS locally.

use crate::CliResult;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// `rpc cert ...`
#[derive(Subcommand)]
pub(crate) enum CertCommand {
    /// Write a throwaway CA, a server certificate and a client certificate (for local trials
    /// only: the CA's key is written next to them).
    Dev(DevArgs),
}

/// Flags of `rpc cert dev`.
#[derive(Args)]
pub(crate) struct DevArgs {
    /// Where to write ca.pem, ca.key, server.pem, server.key, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// A name the server certificate carries besides localhost and 127.0.0.1; repeat for more.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// The client certificate's common name: the caller's identity as servers see it.
    #[arg(long, default_value = "dev-client")]
    client: String,
}

pub(crate) fn run(command: CertCommand) -> CliResult {
    let CertCommand::Dev(args) = command;
    let (server, client) = write_dev(&args.dir, &args.names, &args.client)?;
    println!("wrote a dev CA and certificates to {}", args.dir.display());
    println!("  server.pem: {server}");
    println!("  client.pem: {client}");
    Ok(())
}

/// Writes a fresh dev CA, a server certificate for localhost, 127.0.0.1 and `names`, and a
/// client certificate named `client_name` into `dir`; answers what each certificate says.
pub(crate) fn write_dev(
    dir: &Path,
    extra_names: &[String],
    client_name: &str,
) -> Result<(String, String), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: certificate paths are built by issuer name, and two dev CAs with one
    // name would make a stranger's certificate look like a forgery instead of a stranger's.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    ca.distinguished_name.push(DnType::CommonName, format!("rpc dev CA {nanos:x}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend_from_slice(extra_names);
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.clone())?;
    server.distinguished_name.push(DnType::CommonName, names[0].clone());
    // Client use too: registry members present it to each other.
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, client_name);
    let spiffe = format!("spiffe://rpc.dev/{client_name}");
    client.subject_alt_names = vec![SanType::URI(spiffe.clone().try_into()?)];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

    write(dir, "ca.pem", &ca_cert.pem(), false)?;
    write(dir, "ca.key", &ca_key.serialize_pem(), true)?;
    write(dir, "server.pem", &server_cert.pem(), false)?;
    write(dir, "server.key", &server_key.serialize_pem(), true)?;
    write(dir, "client.pem", &client_cert.pem(), false)?;
    write(dir, "client.key", &client_key.serialize_pem(), true)?;
    Ok((names.join(", "), format!("CN={client_name} URI={spiffe}")))
}

/// Writes `contents` to `dir/name`; keys are readable by their owner only.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> CliResult {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    Ok(())
}

/// TLS flags of commands that call servers.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Speak TLS, trusting the CA certificates in this PEM file (`rpc cert dev` writes ca.pem).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Present this certificate chain for mutual TLS (with --tls-key).
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry, if not the host dialed.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The client TLS settings the flags ask for, if any.
    pub(crate) fn client(&self) -> Result<Option<rpc_core::tls::ClientTls>, rpc_core::tls::TlsError> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let mut tls = rpc_core::tls::ClientTls::builder(ca);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(cert, key);
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.server_name(name);
        }
        tls.build().map(Some)
    }
}
