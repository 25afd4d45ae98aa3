#[rpc_core::message]
pub struct Product {
    pub id: u64,
    #[serde(default, rename = "title")]
    pub name: String,
}

fn main() {}
