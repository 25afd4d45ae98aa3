//! Message types the codec and interop tests share: an enum, a nested message and a union.

/// A C-like enum (protobuf enum, Thrift enum).
#[rpc_core::message]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Level {
    Debug,
    Info,
    Warn = 7,
}

/// A nested message.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f32,
}

/// An enum with data (protobuf oneof, Thrift union); `Code` has an explicit tag.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    Circle(Point),
    Label(String),
    #[tag = 9]
    Code(i64),
}
