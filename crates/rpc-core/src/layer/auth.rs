//! Who may call what, on the server: [`AuthenticateLayer`] establishes the caller with an
//! [`Authenticator`] (bearer tokens in metadata, the TLS client certificate, or your own) and
//! [`AuthorizeLayer`] checks [`AccessRules`] per service and method.
//!
//! ```no_run
//! # use rpc_core::{layer::auth::*, Server};
//! let server = Server::builder()
//!     .layer(AuthenticateLayer::new(BearerTokens::new().token("s3cr3t", "billing")))
//!     .layer(AuthorizeLayer::new(AccessRules::new().allow("billing", "Orders.*").allow("*", "Health.check")));
//! ```
//!
//! The first layer added runs first, so add authentication before authorization (as above). Refusals are `UNAUTHENTICATED` or
//! `PERMISSION_DENIED`, never naming the credentials they were given.

use super::PassOrRefuse;
use crate::{server::ServerRequest, Metadata, Status};
use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};
use tower::{Layer, Service};

/// The metadata key a bearer token travels under, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// The caller, as an [`Authenticator`] established it. Handlers read it with
/// [`Context::principal`](crate::Context::principal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The name rules match against.
    pub name: String,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Establishes who is calling, or refuses the call.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller of `request`; an error (normally `UNAUTHENTICATED`) refuses the call before
    /// any handler runs. Its message reaches the caller: name what is missing, never a secret.
    fn authenticate(&self, request: &ServerRequest) -> Result<Principal, Status>;
}

/// Bearer tokens in the [`AUTHORIZATION`] metadata (`Bearer <token>`), each naming a principal.
/// Clients send one with [`ChannelBuilder::bearer_token`](crate::ChannelBuilder::bearer_token).
#[derive(Clone, Default)]
pub struct BearerTokens {
    tokens: HashMap<String, String>,
}

impl fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tokens are secrets: show whom they name, not what they are.
        let mut names: Vec<&String> = self.tokens.values().collect();
        names.sort();
        f.debug_struct("BearerTokens").field("principals", &names).finish()
    }
}

impl BearerTokens {
    /// No token is valid yet.
    pub fn new() -> BearerTokens {
        BearerTokens::default()
    }

    /// Accepts `token` as the principal `name`.
    pub fn token(mut self, token: impl Into<String>, name: impl Into<String>) -> BearerTokens {
        self.tokens.insert(token.into(), name.into());
        self
    }
}

/// The token in `metadata`, if it carries one as `Bearer <token>`.
fn bearer(metadata: &Metadata) -> Option<&str> {
    let value = metadata.get(AUTHORIZATION)?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Authenticator for BearerTokens {
    fn authenticate(&self, request: &ServerRequest) -> Result<Principal, Status> {
        let token = bearer(request.metadata()).ok_or_else(|| {
            Status::unauthenticated(format!("this server needs a bearer token in the {AUTHORIZATION:?} metadata"))
        })?;
        // Every candidate is compared in full, so the time taken says nothing about the token.
        let found = self.tokens.iter().fold(None, |found, (known, name)| match constant_time_eq(known, token) {
            true => Some(name),
            false => found,
        });
        match found {
            Some(name) => Ok(Principal { name: name.clone() }),
            None => Err(Status::unauthenticated("the bearer token is not valid")),
        }
    }
}

/// A credential that `Debug` does not print.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let longest = a.len().max(b.len());
    let mut differ = u8::from(a.len() != b.len());
    for i in 0..longest {
        differ |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    differ == 0
}

/// The verified TLS client certificate (mutual TLS): the principal is its first URI name (a
/// SPIFFE id, say), else its first DNS name, else its common name.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientCertificate;

impl Authenticator for ClientCertificate {
    fn authenticate(&self, request: &ServerRequest) -> Result<Principal, Status> {
        let identity = request
            .context()
            .peer_identity()
            .ok_or_else(|| Status::unauthenticated("this server needs a TLS client certificate (mutual TLS)"))?;
        let name = identity.uris.first().or(identity.dns_names.first()).or(identity.common_name.as_ref());
        name.map(|name| Principal { name: name.clone() })
            .ok_or_else(|| Status::unauthenticated("the client certificate names nobody (no URI, DNS name or CN)"))
    }
}

/// Tries `first`, then `second` if `first` refuses: `ClientCertificate.or(BearerTokens::..)`.
#[derive(Clone, Debug)]
pub struct Either<A, B> {
    first: A,
    second: B,
}

/// Combinators on authenticators.
pub trait AuthenticatorExt: Authenticator + Sized {
    /// Tries `self`, then `other` if `self` refuses.
    fn or<B: Authenticator>(self, other: B) -> Either<Self, B> {
        Either { first: self, second: other }
    }
}

impl<A: Authenticator> AuthenticatorExt for A {}

impl<A: Authenticator, B: Authenticator> Authenticator for Either<A, B> {
    fn authenticate(&self, request: &ServerRequest) -> Result<Principal, Status> {
        self.first.authenticate(request).or_else(|_| self.second.authenticate(request))
    }
}

/// Refuses calls whose caller the authenticator does not establish; records the principal of
/// the others in the call's [`Context`](crate::Context).
#[derive(Clone)]
pub struct AuthenticateLayer {
    authenticator: Arc<dyn Authenticator>,
}

impl fmt::Debug for AuthenticateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticateLayer").finish_non_exhaustive()
    }
}

impl AuthenticateLayer {
    /// Authenticates every call with `authenticator`.
    pub fn new(authenticator: impl Authenticator) -> AuthenticateLayer {
        AuthenticateLayer { authenticator: Arc::new(authenticator) }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate { inner, authenticator: self.authenticator.clone() }
    }
}

/// The service of [`AuthenticateLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    authenticator: Arc<dyn Authenticator>,
}

impl<S> fmt::Debug for Authenticate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate").finish_non_exhaustive()
    }
}

impl<S> Service<ServerRequest> for Authenticate<S>
where
    S: Service<ServerRequest, Error = Status>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = PassOrRefuse<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        match self.authenticator.authenticate(&request) {
            Ok(principal) => {
                request.context().set_principal(principal);
                PassOrRefuse::pass(self.inner.call(request))
            }
            Err(status) => PassOrRefuse::refuse(status.with_not_started()),
        }
    }
}

/// Who may call which methods: rules of (principal, method pattern), first match wins; a call
/// no rule allows is refused. A principal `*` matches any authenticated caller; a method pattern
/// is `Service.method`, `Service.*` or `*`.
#[derive(Clone, Debug, Default)]
pub struct AccessRules {
    rules: Vec<(String, String, bool)>,
}

impl AccessRules {
    /// No call is allowed yet.
    pub fn new() -> AccessRules {
        AccessRules::default()
    }

    /// Lets `principal` call the methods `pattern` names.
    pub fn allow(mut self, principal: impl Into<String>, pattern: impl Into<String>) -> AccessRules {
        self.rules.push((principal.into(), pattern.into(), true));
        self
    }

    /// Refuses `principal` the methods `pattern` names, before any later `allow`.
    pub fn deny(mut self, principal: impl Into<String>, pattern: impl Into<String>) -> AccessRules {
        self.rules.push((principal.into(), pattern.into(), false));
        self
    }

    /// Whether `principal` may call `service.method`.
    pub fn allows(&self, principal: &str, service: &str, method: &str) -> bool {
        let matches_method = |pattern: &str| match pattern.split_once('.') {
            _ if pattern == "*" => true,
            Some((s, "*")) => s == service,
            Some((s, m)) => s == service && m == method,
            None => false,
        };
        self.rules
            .iter()
            .find(|(who, pattern, _)| (who == "*" || who == principal) && matches_method(pattern))
            .is_some_and(|(_, _, allow)| *allow)
    }
}

/// Refuses calls the rules do not allow for the principal an [`AuthenticateLayer`] recorded.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    rules: Arc<AccessRules>,
}

impl AuthorizeLayer {
    /// Checks every call against `rules`.
    pub fn new(rules: AccessRules) -> AuthorizeLayer {
        AuthorizeLayer { rules: Arc::new(rules) }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, rules: self.rules.clone() }
    }
}

/// The service of [`AuthorizeLayer`].
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    rules: Arc<AccessRules>,
}

impl<S> Service<ServerRequest> for Authorize<S>
where
    S: Service<ServerRequest, Error = Status>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = PassOrRefuse<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        let (service, method) = (request.service(), request.method());
        let refusal = match request.context().principal() {
            None => Some(Status::unauthenticated(format!(
                "{service}.{method} needs an authenticated caller; add an AuthenticateLayer before this layer"
            ))),
            Some(p) if !self.rules.allows(&p.name, service, method) => {
                Some(Status::permission_denied(format!("{p} may not call {service}.{method}")))
            }
            Some(_) => None,
        };
        match refusal {
            Some(status) => PassOrRefuse::refuse(status.with_not_started()),
            None => PassOrRefuse::pass(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_principals_and_method_patterns_first_match_wins() {
        let rules = AccessRules::new()
            .deny("intern", "Orders.cancel")
            .allow("intern", "Orders.*")
            .allow("billing", "Invoices.send")
            .allow("*", "Health.*");
        assert!(rules.allows("intern", "Orders", "get"));
        assert!(!rules.allows("intern", "Orders", "cancel"), "an earlier deny wins");
        assert!(rules.allows("billing", "Invoices", "send"));
        assert!(!rules.allows("billing", "Invoices", "void"));
        assert!(!rules.allows("billing", "Orders", "get"), "nothing allows it");
        assert!(rules.allows("anyone", "Health", "check"));
        assert!(!rules.allows("anyone", "Healthy", "check"), "a service name matches whole");
    }

    #[test]
    fn bearer_tokens_compare_whole_tokens() {
        assert!(constant_time_eq("s3cr3t", "s3cr3t"));
        assert!(!constant_time_eq("s3cr3t", "s3cr3"));
        assert!(!constant_time_eq("s3cr3", "s3cr3t"));
        assert!(!constant_time_eq("s3cr3t", "S3cr3t"));
        let mut metadata = Metadata::new();
        metadata.insert(AUTHORIZATION, "Bearer  s3cr3t ");
        assert_eq!(bearer(&metadata), Some("s3cr3t"));
        metadata.insert(AUTHORIZATION, "Basic dXNlcg==");
        assert_eq!(bearer(&metadata), None);
    }
}
