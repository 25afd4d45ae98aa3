//! `rpc call`.
use crate::CliResult;

#[derive(clap::Args)]
pub(crate) struct CallArgs {}

pub(crate) async fn run(_: CallArgs) -> CliResult {
    Ok(())
}
