//! [`StaticList`]: a fixed set of endpoints.

use super::{Change, Discover, Endpoint};
use rpc_core::Status;

/// Endpoints known up front; yields them once, then never changes.
#[derive(Clone, Debug)]
pub struct StaticList {
    endpoints: Option<Vec<Endpoint>>,
}

impl StaticList {
    /// A list of `endpoints` (addresses or [`Endpoint`]s).
    pub fn new<E: Into<Endpoint>>(endpoints: impl IntoIterator<Item = E>) -> StaticList {
        StaticList { endpoints: Some(endpoints.into_iter().map(Into::into).collect()) }
    }
}

impl Discover for StaticList {
    async fn next_changes(&mut self) -> Result<Vec<Change>, Status> {
        match self.endpoints.take() {
            Some(endpoints) => Ok(endpoints.into_iter().map(Change::Added).collect()),
            None => std::future::pending().await,
        }
    }
}
