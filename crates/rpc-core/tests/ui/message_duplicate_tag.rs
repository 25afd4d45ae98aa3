#[rpc_core::message]
pub struct Product {
    pub id: u64,
    #[tag = 1]
    pub name: String,
}

fn main() {}
