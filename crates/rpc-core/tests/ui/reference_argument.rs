#[rpc_core::service]
pub trait Catalog {
    async fn find(&self, name: &str) -> u64;
}

fn main() {}
