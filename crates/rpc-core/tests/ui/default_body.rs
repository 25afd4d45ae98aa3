#[rpc_core::service]
pub trait Catalog {
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
