//! Service discovery, load balancing and per-endpoint fault tolerance.
//!
//! - [`discover`]: the [`Discover`] seam and its sources ([`StaticList`], [`DynamicList`],
//!   [`Dns`]; the registry implements it too).
//! - [`balance`]: [`Balancer`]s — random, round robin, weighted, consistent hash (optionally
//!   load-bounded) and the default, [`P2c`] over [`Load`] (calls in flight and peak-EWMA latency).
//! - [`breaker`], [`outlier`], [`health`]: circuit breaking, passive outlier ejection and active
//!   health checks, as sans-IO state machines with time passed in.
//! - [`LbChannel`]: a tower `Service<Request>` over a discovered set of endpoints, putting the
//!   above together. [`lookaside`]: a balancer run as a service, for clients that ask it which
//!   instance to call.
//!
//! Timeouts, retries, rate and concurrency limits are layers in `rpc_core::layer`.
//!
//! ```no_run
//! use rpc_lb::{LbChannel, StaticList};
//! # #[rpc_core::service] pub trait Catalog { async fn get(&self, id: u64) -> String; }
//! # async fn run() -> Result<(), rpc_core::Status> {
//! let channel = LbChannel::builder(StaticList::new(["10.0.0.1:7001", "10.0.0.2:7001"])).connect().await?;
//! let catalog = CatalogClient::new(channel);
//! let name = catalog.get(42).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod balance;
pub mod breaker;
mod channel;
pub mod discover;
pub mod health;
mod load;
pub mod lookaside;
pub mod outlier;
mod rng;
mod window;

pub use balance::{Balancer, Candidate, ConsistentHash, P2c, Random, RoundRobin, HASH_KEY};
pub use breaker::{Breaker, BreakerConfig, BreakerState, CircuitBreakerLayer};
pub use channel::{EndpointStatus, LbChannel, LbChannelBuilder};
pub use discover::{Change, Discover, Dns, DynamicHandle, DynamicList, Endpoint, StaticList};
pub use health::HealthCheck;
pub use load::Load;
pub use outlier::OutlierConfig;
