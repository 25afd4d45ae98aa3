#[rpc_core::service]
pub trait Catalog {
    async fn get(id: u64) -> u64;
}

fn main() {}
