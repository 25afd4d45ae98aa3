//! Procedural macros of the RPC framework; use them through `rpc_core` (`#[rpc_core::service]`,
//! `#[rpc_core::message]`), which re-exports them together with what the generated code needs.
//!
//! The macros only generate code; they perform no I/O and know nothing of sockets or codecs
//! beyond the traits that `rpc-core` defines.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod message;
mod service;

/// Turns a trait of `async fn`s into a service: a client stub, a server dispatcher and a
/// method table.
///
/// For `trait Catalog` it generates `CatalogClient<S = Channel>` (one method per RPC, generic
/// over the tower service that carries requests) and `CatalogServer<T: Catalog>` (a dispatcher
/// and tower `Service`). Methods take `&self` and owned arguments and return `T` or
/// `Result<T, E>`, where `E` reaches the caller as a value. `#[oneway]` marks a method without a
/// reply, `#[idempotent]` one that is safe to retry. `#[service(name = "shop.Catalog")]` sets the
/// name on the wire (default: the trait's name).
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    service::expand(attr.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Makes a struct or enum encodable by every codec.
#[proc_macro_attribute]
pub fn message(attr: TokenStream, item: TokenStream) -> TokenStream {
    message::expand(attr.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}
