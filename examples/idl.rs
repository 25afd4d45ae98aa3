//! Writes a service's schema as `.proto` and `.thrift`, for protoc and the Thrift compiler to
//! generate peers in other languages from. Put the same lines in a build script or a small
//! binary of your own crate for your services.
//!
//! Run with `cargo run -p examples --example idl -- OUT_DIR` (without a directory it prints
//! the `.proto`).

use rpc_core::Channel;

/// A product in the catalog.
#[rpc_core::message]
pub struct Product {
    id: u64,
    name: String,
    /// Price in cents.
    price_cents: i64,
    tags: Vec<String>,
}

/// No product has that id.
#[rpc_core::message]
pub struct NotFound {
    id: u64,
}

/// A product catalog.
#[rpc_core::service]
pub trait Catalog {
    /// The product with `id`.
    async fn get(&self, id: u64) -> Result<Product, NotFound>;
    /// Up to `limit` products.
    #[idempotent]
    async fn list(&self, limit: u32) -> Vec<Product>;
}

fn main() -> std::io::Result<()> {
    // The schema comes from the trait and its messages: `<CatalogClient<Channel>>::INFO` (or
    // the server's) holds it, whatever the service's implementation.
    let idl = <CatalogClient<Channel>>::INFO.idl();
    match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("catalog.proto"), idl.to_proto())?;
            std::fs::write(dir.join("catalog.thrift"), idl.to_thrift())?;
            println!("wrote catalog.proto and catalog.thrift to {}", dir.display());
        }
        None => print!("{}", idl.to_proto()),
    }
    Ok(())
}
