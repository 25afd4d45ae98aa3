//! `rpc call`: any method of any service, JSON in and out, any codec on the wire.

use crate::CliResult;
use rpc_core::{Call, Channel, Codec, Request};
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct CallArgs {
    /// Server address, `host:port`.
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
}

pub(crate) async fn run(args: CallArgs) -> CliResult {
    let (service, method) =
        args.method.rsplit_once('.').ok_or_else(|| format!("expected Service.method, got {:?}", args.method))?;
    let body: serde_json::Value =
        serde_json::from_str(&args.args).map_err(|e| format!("arguments are not valid JSON: {e}"))?;
    let channel = Channel::builder(args.addr).codec(args.codec).caller("rpc-cli").connect().await?;
    let mut call: Call<_, serde_json::Value> =
        Call::new(channel, Request::new(service.to_owned(), method.to_owned(), body))
            .timeout(Duration::from_millis(args.timeout_ms));
    for pair in &args.metadata {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("metadata must be key=value, got {pair:?}"))?;
        call = call.metadata(k, v);
    }
    let reply = call.await?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}
