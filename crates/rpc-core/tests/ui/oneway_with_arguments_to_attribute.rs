#[rpc_core::service]
pub trait Log {
    #[oneway(fast)]
    async fn write(&self, line: String);
}

fn main() {}
