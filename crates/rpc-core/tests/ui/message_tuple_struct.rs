#[rpc_core::message]
pub struct Meters(f64);

fn main() {}
