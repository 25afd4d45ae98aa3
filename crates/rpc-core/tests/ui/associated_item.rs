#[rpc_core::service]
pub trait Catalog {
    const LIMIT: u32;
    async fn get(&self, id: u64) -> u64;
}

fn main() {}
