#[rpc_core::service]
pub trait Upload {
    async fn put(&self, name: String, chunks: rpc_core::Streaming<Vec<u8>>) -> u64;
}

fn main() {}
