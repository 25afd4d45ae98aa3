//! `rpc call`: any method of any service, JSON in and out, any codec on the wire.

use crate::CliResult;
use rpc_core::{Call, Channel, Codec, Request, Response, Status};
use std::time::Duration;
use tower::Service;

#[derive(clap::Args)]
pub(crate) struct CallArgs {
    /// Server address, `host:port`; with --registry, a registered service's name.
    addr: String,
    /// `Service.method`, for example `Catalog.get`.
    method: String,
    /// Arguments as a JSON object keyed by argument name, for example `{"id": 42}`.
    #[arg(default_value = "{}")]
    args: String,
    /// Codec on the wire (json or msgpack).
    #[arg(long, default_value = "json")]
    codec: Codec,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Metadata to send, `key=value`; repeat for more.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Registry members, comma-separated: find the service's instances there by name and
    /// balance over them.
    #[arg(long, value_delimiter = ',')]
    registry: Vec<String>,
    #[command(flatten)]
    tls: crate::cert::TlsArgs,
}

pub(crate) async fn run(args: CallArgs) -> CliResult {
    let (service, method) =
        args.method.rsplit_once('.').ok_or_else(|| format!("expected Service.method, got {:?}", args.method))?;
    let body: serde_json::Value =
        serde_json::from_str(&args.args).map_err(|e| format!("arguments are not valid JSON: {e}"))?;
    let request = Request::new(service.to_owned(), method.to_owned(), body);
    let tls = args.tls.client()?;
    let builder = move |addr: &str| {
        let builder = Channel::builder(addr).codec(args.codec).caller("rpc-cli");
        match &tls {
            Some(tls) => builder.tls(tls.clone()),
            None => builder,
        }
    };
    if args.registry.is_empty() {
        let channel = builder(&args.addr).connect().await?;
        return send(channel, request, &args).await;
    }
    let registry = rpc_registry::RegistryClient::connect(args.registry.clone());
    let channel = rpc_lb::LbChannel::builder(registry.discover(&args.addr))
        .channel(move |e| builder(&e.addr))
        .connect()
        .await
        .map_err(|e| format!("cannot list the instances of {:?}: {e}", args.addr))?;
    if channel.endpoints().is_empty() {
        return Err(format!("no instance of {:?} is registered (see `rpc ls`)", args.addr).into());
    }
    send(channel, request, &args).await
}

async fn send<S>(channel: S, request: Request, args: &CallArgs) -> CliResult
where
    S: Service<Request, Response = Response, Error = Status>,
{
    let mut call: Call<_, serde_json::Value> =
        Call::new(channel, request).timeout(Duration::from_millis(args.timeout_ms));
    for pair in &args.metadata {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("metadata must be key=value, got {pair:?}"))?;
        call = call.metadata(k, v);
    }
    let reply = call.await?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}
