#[rpc_core::service]
pub trait Sink {
    #[oneway]
    async fn push(&self, items: rpc_core::Streaming<u64>);
}

fn main() {}
