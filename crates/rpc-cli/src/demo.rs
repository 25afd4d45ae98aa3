//! `rpc demo`.
use crate::CliResult;

pub(crate) async fn run() -> CliResult {
    Ok(())
}
