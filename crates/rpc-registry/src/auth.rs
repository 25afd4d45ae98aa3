//! Who may do what to which keys (etcd's RBAC): users authenticate with a bearer token or a
//! TLS client certificate naming them, and hold roles; a role grants `read`, `write` or `admin`
//! on key prefixes. Every API checks them: reads and watches need `read` on the keys they
//! cover, writes need `write`, a transaction needs both for what it compares, reads and writes,
//! and membership, leader moves and compaction need `admin` on every key (prefix `""`).
//!
//! The configuration is JSON (`rpc registry serve --auth FILE`):
//!
//! ```json
//! {
//!   "users": [
//!     {"name": "root", "token": "s3cr3t", "roles": ["root"]},
//!     {"name": "orders", "token": "t0k3n", "roles": ["services"]},
//!     {"name": "spiffe://rpc.dev/billing", "roles": ["services"]}
//!   ],
//!   "roles": [
//!     {"name": "root", "permissions": [{"prefix": "", "access": "admin"}]},
//!     {"name": "services", "permissions": [{"prefix": "services/", "access": "write"}, {"prefix": "config/", "access": "read"}]}
//!   ]
//! }
//! ```

use crate::{
    api::{prefix_end, RequestOp, TxnRequest},
    service::{ErrorCode, RegistryError},
};
use rpc_core::{
    layer::auth::{Authenticator, BearerTokens, ClientCertificate, Principal},
    server::ServerRequest,
    Context, Status,
};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, path::Path};

/// Users and roles; see the [module documentation](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// Who may call.
    #[serde(default)]
    pub users: Vec<User>,
    /// What roles grant.
    #[serde(default)]
    pub roles: Vec<Role>,
}

/// A user: a name (what a client certificate names, or any name for a token user), an optional
/// bearer token, and roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's name.
    pub name: String,
    /// The bearer token that authenticates the user, if any.
    #[serde(default)]
    pub token: Option<String>,
    /// The roles the user holds.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A named set of permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The role's name.
    pub name: String,
    /// What it grants.
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

/// Access to every key that starts with `prefix` (`""`: every key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// The keys it covers.
    pub prefix: String,
    /// What it allows on them.
    pub access: Access,
}

/// What a permission allows; each level includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Range and watch.
    Read,
    /// Put and delete too.
    Write,
    /// Membership, leader moves and compaction too (on prefix `""`).
    Admin,
}

impl AuthConfig {
    /// Reads the configuration from a JSON file, checking that every role a user holds exists.
    pub fn load(path: impl AsRef<Path>) -> Result<AuthConfig, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: AuthConfig = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid auth configuration: {e}", path.display()))?;
        config.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks that every role a user holds is defined.
    pub fn check(&self) -> Result<(), String> {
        for user in &self.users {
            if let Some(role) = user.roles.iter().find(|r| !self.roles.iter().any(|known| &known.name == *r)) {
                return Err(format!("user {:?} holds role {role:?}, which is not defined", user.name));
            }
        }
        Ok(())
    }

    /// Who callers are: the client certificate's name, or else a user's token.
    pub(crate) fn authenticator(&self) -> impl Authenticator {
        let tokens = self
            .users
            .iter()
            .filter_map(|u| u.token.as_ref().map(|t| (t, &u.name)))
            .fold(BearerTokens::new(), |tokens, (token, name)| tokens.token(token, name));
        rpc_core::layer::auth::AuthenticatorExt::or(ClientCertificate, tokens)
    }

    /// The permissions of each user, for checks on every call.
    pub(crate) fn guard(&self) -> Guard {
        let grants = self
            .users
            .iter()
            .map(|user| {
                let permissions = self
                    .roles
                    .iter()
                    .filter(|role| user.roles.contains(&role.name))
                    .flat_map(|role| role.permissions.iter().map(|p| (p.prefix.as_bytes().to_vec(), p.access)))
                    .collect();
                (user.name.clone(), permissions)
            })
            .collect();
        Guard { grants }
    }
}

/// The permissions of every user; checks each request against its caller's.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    grants: HashMap<String, Vec<(Vec<u8>, Access)>>,
}

impl Guard {
    /// Refuses unless the current call's principal holds `access` on every key of
    /// `[key, range_end)` (just `key` when `range_end` is empty).
    pub(crate) fn check(&self, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), RegistryError> {
        self.check_for(principal().as_deref(), access, key, range_end)
    }

    /// Refuses unless `principal` holds `access` on `[key, range_end)`.
    pub(crate) fn check_for(
        &self,
        principal: Option<&str>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), RegistryError> {
        let Some(principal) = principal.filter(|p| !p.is_empty()) else {
            return Err(RegistryError::new(ErrorCode::PermissionDenied, "the call has no authenticated caller"));
        };
        let granted = self.grants.get(principal).is_some_and(|grants| {
            grants.iter().any(|(prefix, level)| *level >= access && covers(prefix, key, range_end))
        });
        match granted {
            true => Ok(()),
            false => {
                let what = match range_end {
                    [] => format!("key {:?}", String::from_utf8_lossy(key)),
                    _ => format!("keys from {:?}", String::from_utf8_lossy(key)),
                };
                Err(RegistryError::new(
                    ErrorCode::PermissionDenied,
                    format!("{principal} may not {} {what}", access.verb()),
                ))
            }
        }
    }

    /// Checks everything a transaction compares, reads and writes, in both branches.
    pub(crate) fn check_txn(&self, txn: &TxnRequest) -> Result<(), RegistryError> {
        let principal = principal();
        for compare in &txn.compare {
            self.check_for(principal.as_deref(), Access::Read, &compare.key, &[])?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(r) => self.check_for(principal.as_deref(), Access::Read, &r.key, &r.range_end)?,
                RequestOp::Put(p) => self.check_for(principal.as_deref(), Access::Write, &p.key, &[])?,
                RequestOp::DeleteRange(d) => {
                    self.check_for(principal.as_deref(), Access::Write, &d.key, &d.range_end)?
                }
            }
        }
        Ok(())
    }
}

impl Access {
    fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "administer",
        }
    }
}

/// How a watch refused for want of permission starts its cancel reason (as etcd's does), so
/// clients can tell it from other cancellations.
pub const PERMISSION_DENIED: &str = "permission denied: ";

/// The name of the current call's caller, as the member's authentication layer found it.
pub(crate) fn principal() -> Option<String> {
    Context::current().and_then(|c| c.principal().map(|p| p.name.clone()))
}

/// Whether the keys under `prefix` include all of `[key, range_end)`.
fn covers(prefix: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if prefix.is_empty() {
        return true;
    }
    if !key.starts_with(prefix) {
        return false;
    }
    match range_end {
        [] => true,
        // From `key` to the end of the key space: more than any non-empty prefix holds.
        [0] => false,
        end => end <= prefix_end(prefix).as_slice(),
    }
}

/// How a member authenticates its callers: peers by their TLS client certificate (when the
/// member serves TLS), clients by the [`AuthConfig`] (when it has one).
pub(crate) struct MemberAuthenticator<A> {
    pub(crate) users: Option<A>,
    pub(crate) peers_need_certificate: bool,
}

/// The principal of member-to-member calls; not a name a user can hold (users are named in
/// configuration, and this one has a space).
const PEER: &str = "raft peer";

impl<A: Authenticator> Authenticator for MemberAuthenticator<A> {
    fn authenticate(&self, request: &ServerRequest) -> Result<Principal, Status> {
        if &**request.service() == "RaftPeer" {
            if self.peers_need_certificate && request.context().peer_identity().is_none() {
                return Err(Status::permission_denied(
                    "member traffic needs a TLS client certificate from the cluster's CA",
                ));
            }
            return Ok(Principal { name: PEER.to_owned() });
        }
        match &self.users {
            Some(users) => users.authenticate(request),
            None => Ok(Principal { name: String::new() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        let config: AuthConfig = serde_json::from_str(
            r#"{"users": [{"name": "root", "roles": ["root"]}, {"name": "svc", "token": "t", "roles": ["services"]}],
                "roles": [{"name": "root", "permissions": [{"prefix": "", "access": "admin"}]},
                          {"name": "services", "permissions": [{"prefix": "services/", "access": "write"},
                                                               {"prefix": "config/", "access": "read"}]}]}"#,
        )
        .unwrap();
        config.check().unwrap();
        config.guard()
    }

    #[test]
    fn permissions_cover_their_prefix_and_nothing_more() {
        let guard = guard();
        let svc = Some("svc");
        assert!(guard.check_for(svc, Access::Write, b"services/orders/a", b"").is_ok());
        assert!(guard.check_for(svc, Access::Read, b"services/", &prefix_end(b"services/")).is_ok());
        assert!(guard.check_for(svc, Access::Read, b"services/", &[0]).is_err(), "open-ended ranges leave the prefix");
        assert!(guard.check_for(svc, Access::Read, b"services/", b"servicez").is_err());
        assert!(guard.check_for(svc, Access::Read, b"config/limits", b"").is_ok());
        let denied = guard.check_for(svc, Access::Write, b"config/limits", b"").unwrap_err();
        assert_eq!(denied.code, ErrorCode::PermissionDenied);
        assert_eq!(denied.message, r#"svc may not write key "config/limits""#);
        assert!(guard.check_for(svc, Access::Admin, b"", &[0]).is_err());
        assert!(guard.check_for(Some("root"), Access::Admin, b"", &[0]).is_ok());
        assert!(guard.check_for(Some("stranger"), Access::Read, b"services/x", b"").is_err());
        assert!(guard.check_for(None, Access::Read, b"services/x", b"").is_err());
    }

    fn request(service: &'static str, identity: Option<rpc_core::PeerIdentity>) -> ServerRequest {
        let context = rpc_core::Context::builder(service, "deliver");
        let context = match identity {
            Some(identity) => context.peer_identity(identity),
            None => context,
        };
        ServerRequest::new(context.build(), rpc_core::Codec::default(), Default::default())
    }

    #[test]
    fn member_traffic_needs_a_certificate_and_client_traffic_the_users_credentials() {
        let config = AuthConfig {
            users: vec![User { name: "svc".into(), token: Some("t".into()), roles: Vec::new() }],
            roles: Vec::new(),
        };
        let member = MemberAuthenticator { users: Some(config.authenticator()), peers_need_certificate: true };
        let refused = member.authenticate(&request("RaftPeer", None)).unwrap_err();
        assert_eq!(refused.code(), rpc_core::Code::PermissionDenied);
        let certified = rpc_core::PeerIdentity { common_name: Some("n2".into()), ..Default::default() };
        assert_eq!(member.authenticate(&request("RaftPeer", Some(certified))).unwrap().name, PEER);
        let anonymous = member.authenticate(&request("RegistryApi", None)).unwrap_err();
        assert_eq!(anonymous.code(), rpc_core::Code::Unauthenticated);
        let open = MemberAuthenticator::<ClientCertificate> { users: None, peers_need_certificate: false };
        assert!(open.authenticate(&request("RaftPeer", None)).is_ok(), "without TLS, members are not checked");
    }

    #[test]
    fn a_user_holding_an_undefined_role_is_refused() {
        let config = AuthConfig {
            users: vec![User { name: "u".into(), token: None, roles: vec!["ghost".into()] }],
            roles: Vec::new(),
        };
        assert!(config.check().unwrap_err().contains("ghost"));
    }
}
