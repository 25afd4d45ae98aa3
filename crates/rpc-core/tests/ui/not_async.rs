#[rpc_core::service]
pub trait Catalog {
    fn get(&self, id: u64) -> u64;
}

fn main() {}
