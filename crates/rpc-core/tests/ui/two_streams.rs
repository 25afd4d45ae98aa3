#[rpc_core::service]
pub trait Merge {
    async fn merge(&self, left: rpc_core::Streaming<u64>, right: rpc_core::Streaming<u64>) -> u64;
}

fn main() {}
