//! The service registry: a replicated state machine on `rpc-raft`.
//!
//! This crate is filled in by the registry work; today it only fixes its place in the dependency
//! order (`rpc-lb` <- `rpc-registry` <- `rpc-cli`).
