#[rpc_core::message]
pub struct Reading {
    pub initial: char,
    pub values: Vec<Vec<f64>>,
}

fn main() {}
