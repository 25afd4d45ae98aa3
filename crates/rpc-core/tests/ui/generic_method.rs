#[rpc_core::service]
pub trait Catalog {
    async fn get<T>(&self, id: T) -> u64;
}

fn main() {}
