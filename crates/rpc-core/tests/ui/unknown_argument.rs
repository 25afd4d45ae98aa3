#[rpc_core::service(version = "2")]
pub trait Catalog {
    async fn get(&self, id: u64) -> u64;
}

fn main() {}
