//! `rpc idl`: prints the schema of the example services as `.proto` or `.thrift`, so stock
//! protobuf and Thrift tools can generate peers for them.

use crate::{bench::rpc::BenchClient, demo, CliResult};
use clap::{Args, ValueEnum};
use rpc_core::__private::ServiceInfo;

/// The services `rpc idl` knows.
fn services() -> [&'static ServiceInfo; 5] {
    [
        demo::InventoryClient::<()>::INFO,
        demo::OrdersClient::<()>::INFO,
        demo::ProductsClient::<()>::INFO,
        demo::CheckoutClient::<()>::INFO,
        BenchClient::<()>::INFO,
    ]
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// proto3 `.proto`.
    Proto,
    /// Apache Thrift `.thrift`.
    Thrift,
}

#[derive(Args)]
pub(crate) struct IdlArgs {
    /// The service (Inventory, Orders, Products, Checkout, Bench).
    service: String,
    /// The schema language.
    #[arg(long, value_enum, default_value = "proto")]
    format: Format,
}

pub(crate) fn run(args: IdlArgs) -> CliResult {
    let Some(info) = services().into_iter().find(|s| s.name.eq_ignore_ascii_case(&args.service)) else {
        let known: Vec<&str> = services().iter().map(|s| s.name).collect();
        return Err(format!("no example service {:?}; known: {}", args.service, known.join(", ")).into());
    };
    let idl = info.idl();
    print!(
        "{}",
        match args.format {
            Format::Proto => idl.to_proto(),
            Format::Thrift => idl.to_thrift(),
        }
    );
    Ok(())
}
