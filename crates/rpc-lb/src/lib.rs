//! Service discovery, load balancing and per-endpoint fault tolerance.
//!
//! This crate is filled in by the load-balancing work; today it only fixes its place in the
//! dependency order (`rpc-core` <- `rpc-lb` <- `rpc-registry`).
