//! The smallest complete program: define a service, serve it, call it.
//!
//! Run with `cargo run -p examples --example hello`.

use rpc_core::{Channel, Server};
use std::time::Duration;

/// A product in the catalog.
#[rpc_core::message]
#[derive(Clone, Debug)]
pub struct Product {
    id: u64,
    name: String,
    price_cents: i64,
}

/// No product has that id.
#[rpc_core::message]
#[derive(Debug)]
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

struct Shelf(Vec<Product>);

impl Catalog for Shelf {
    async fn get(&self, id: u64) -> Result<Product, NotFound> {
        self.0.iter().find(|p| p.id == id).cloned().ok_or(NotFound { id })
    }

    async fn list(&self, limit: u32) -> Vec<Product> {
        self.0.iter().take(limit as usize).cloned().collect()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shelf = Shelf(vec![
        Product { id: 1, name: "keyboard".into(), price_cents: 4_999 },
        Product { id: 2, name: "mouse".into(), price_cents: 1_999 },
    ]);
    let server = Server::builder().add_service(CatalogServer::new(shelf)).start("127.0.0.1:0").await?;

    let channel = Channel::builder(server.local_addr().to_string()).timeout(Duration::from_secs(1)).connect().await?;
    let catalog = CatalogClient::new(channel);

    println!("get(1)  = {:?}", catalog.get(1).await?);
    println!("get(9)  = {:?}", catalog.get(9).await?);
    println!("list(5) = {:?}", catalog.list(5).await?);

    server.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}
