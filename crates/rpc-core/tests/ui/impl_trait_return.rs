#[rpc_core::service]
pub trait Catalog {
    async fn ids(&self) -> impl Iterator<Item = u64>;
}

fn main() {}
