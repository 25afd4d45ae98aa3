#[rpc_core::message]
pub enum Shape {
    Circle(f64),
    #[serde(skip)]
    Square(f64),
}

fn main() {}
