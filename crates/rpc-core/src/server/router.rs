//! Routing calls to the services on one listener by service name.

use super::{Dispatch, ServerRequest, ServerResponse, ServiceInfo};
use crate::Status;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// The services of a server, addressed by name. A tower `Service`, cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    services: Arc<Vec<Arc<dyn Dispatch>>>,
}

impl Router {
    /// Adds a service; a later service with the same name replaces the earlier one.
    pub fn add(&mut self, service: impl Dispatch) {
        let services = Arc::make_mut(&mut self.services);
        services.retain(|s| s.info().name != service.info().name);
        services.push(Arc::new(service));
    }

    /// The name of the service that has a method `method`: where a plain Apache Thrift call,
    /// which names no service, goes.
    pub(crate) fn service_with(&self, method: &str) -> Option<&'static str> {
        self.services().find(|s| s.method(method).is_some()).map(|s| s.name)
    }

    /// The services served, in the order they were added.
    pub fn services(&self) -> impl Iterator<Item = &'static ServiceInfo> + '_ {
        self.services.iter().map(|s| s.info())
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.services().map(|s| s.name)).finish()
    }
}

impl tower::Service<ServerRequest> for Router {
    type Response = ServerResponse;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<ServerResponse, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        // A handful of services per listener: a scan beats hashing.
        let (service, method) = (request.service(), request.method());
        let found = self.services.iter().find(|s| s.info().name.as_bytes() == service.as_bytes());
        let served = || self.services().map(|s| s.name).collect::<Vec<_>>().join(", ");
        match found {
            Some(found) => found.dispatch(request),
            None => {
                // No name: a plain Apache Thrift call whose method no service here has.
                let status = match service.is_empty() {
                    true => Status::unimplemented(format!(
                        "no service here has a method {:?} (this server serves: {}); check the address and method name",
                        method.as_str(),
                        served()
                    )),
                    false => Status::unimplemented(format!(
                        "service {:?} is not served here (this server serves: {}); check the address and service name",
                        service.as_str(),
                        served()
                    )),
                };
                Box::pin(std::future::ready(Err(status)))
            }
        }
    }
}
