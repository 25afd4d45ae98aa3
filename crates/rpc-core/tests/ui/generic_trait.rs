#[rpc_core::service]
pub trait Store<T> {
    async fn get(&self, id: u64) -> u64;
}

fn main() {}
