#[rpc_core::service]
pub trait Log {
    #[oneway]
    async fn write(&self, line: String) -> bool;
}

fn main() {}
