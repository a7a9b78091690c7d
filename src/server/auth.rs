//! API keys: who may call what, on both doors.
//!
//! A key has one [`Role`]: `ingest`, `read` or `admin` (admin may do
//! everything). Keys come from the configuration file (`[[api_keys]]`) and
//! from `COHORT_API_KEYS` (`key:role,key:role`), merged by
//! [`ApiKeys::new`]. A client presents its key as `authorization: Bearer
//! KEY` or `x-api-key: KEY` (gRPC metadata or HTTP header).
//!
//! On gRPC one tower layer, [`GrpcAuthLayer`], checks every request before
//! it reaches a service: the method's role comes from [`GRPC_METHODS`]
//! (a method of `cohort.v1` that is not listed needs `admin`, so a new one
//! is closed until it is given a role). No key, or a key the node does not
//! know, is `UNAUTHENTICATED`; a key whose role does not allow the method is
//! `PERMISSION_DENIED`, naming the role needed. The health service and
//! reflection (the API's shape, public in the proto anyway) stay open for
//! probes and tools. The caller's standing is left in the request's
//! extensions as a [`Caller`], for replies that depend on it (`Status`).
//! With no keys configured every request passes, as a [`Caller::Open`].
//!
//! The HTTP door's rule (write keys or an ingest key) is in
//! [`super::http`], which uses [`ApiKeys::lookup`] and
//! [`presented_api_key`] from here.
//!
//! Keys are compared in constant time ([`ApiKeys::lookup`] compares every
//! configured key, whatever matches) and never logged or echoed: errors name
//! the entry's position, not the key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use thiserror::Error;
use tonic::codegen::http;

use crate::node::{ApiKeyConfig, Role};
use crate::server::status::{status, ServerError};

/// Why the API keys of a configuration cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum AuthError {
    /// An entry of `COHORT_API_KEYS` is not `KEY:ROLE`.
    #[error("{origin}: entry {entry} is not KEY:ROLE (the roles are ingest, read, admin)")]
    NotKeyRole {
        /// Where the entry is (`COHORT_API_KEYS`).
        origin: &'static str,
        /// Its 1-based position.
        entry: usize,
    },
    /// A role that does not exist.
    #[error("{origin}: entry {entry} has the role {role:?}; the roles are ingest, read, admin")]
    BadRole {
        /// Where the entry is.
        origin: &'static str,
        /// Its 1-based position.
        entry: usize,
        /// The role as written.
        role: String,
    },
    /// An empty key (which anything would match).
    #[error("{origin}: entry {entry} has an empty key")]
    EmptyKey {
        /// Where the entry is.
        origin: &'static str,
        /// Its 1-based position.
        entry: usize,
    },
    /// A key that cannot travel in a header (control characters, spaces at
    /// either end, non-ASCII).
    #[error("{origin}: the key of entry {entry} holds characters that cannot be sent in a header (use printable ASCII without spaces)")]
    UnsendableKey {
        /// Where the entry is.
        origin: &'static str,
        /// Its 1-based position.
        entry: usize,
    },
    /// The same key listed twice with different roles.
    #[error("api_keys: entry {entry} repeats the key of entry {first} with another role ({role} instead of {first_role})")]
    Conflict {
        /// The 1-based position of the repeat among all keys (file first).
        entry: usize,
        /// The position of its first listing.
        first: usize,
        /// The repeat's role.
        role: Role,
        /// The first listing's role.
        first_role: Role,
    },
}

/// Parses `COHORT_API_KEYS`: `key:role` entries separated by commas
/// (spaces around entries are ignored; the last `:` separates the role, so
/// a key may hold `:`).
pub fn parse_keys_env(text: &str) -> Result<Vec<ApiKeyConfig>, AuthError> {
    const ORIGIN: &str = "COHORT_API_KEYS";
    let mut keys = Vec::new();
    for (i, entry) in text.split(',').map(str::trim).enumerate().filter(|(_, e)| !e.is_empty()) {
        let entry_no = i + 1;
        let (key, role) =
            entry.rsplit_once(':').ok_or(AuthError::NotKeyRole { origin: ORIGIN, entry: entry_no })?;
        let role = Role::from_name(role).ok_or_else(|| AuthError::BadRole {
            origin: ORIGIN,
            entry: entry_no,
            role: role.to_string(),
        })?;
        keys.push(ApiKeyConfig { key: key.to_string(), role });
    }
    Ok(keys)
}

/// The keys a node accepts, ready to be checked. Cheap to clone; its `Debug`
/// shows how many keys there are, never the keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<(Vec<u8>, Role)>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// The keys of a configuration, checked: none empty or unsendable, and
    /// a key listed twice only with the same role.
    pub fn new(configured: &[ApiKeyConfig]) -> Result<ApiKeys, AuthError> {
        let mut keys: Vec<(Vec<u8>, Role)> = Vec::with_capacity(configured.len());
        for (i, c) in configured.iter().enumerate() {
            let entry = i + 1;
            if c.key.is_empty() {
                return Err(AuthError::EmptyKey { origin: "api_keys", entry });
            }
            if c.key.trim() != c.key || !c.key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(AuthError::UnsendableKey { origin: "api_keys", entry });
            }
            match keys.iter().position(|(k, _)| k == c.key.as_bytes()) {
                Some(first) if keys[first].1 != c.role => {
                    return Err(AuthError::Conflict {
                        entry,
                        first: first + 1,
                        role: c.role,
                        first_role: keys[first].1,
                    })
                }
                Some(_) => {}
                None => keys.push((c.key.as_bytes().to_vec(), c.role)),
            }
        }
        Ok(ApiKeys { keys: Arc::new(keys) })
    }

    /// Whether no key is configured (the doors are then open).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The role of `key`, if it is configured. Every configured key is
    /// compared, in time that does not depend on where the bytes differ, so
    /// the answer's timing does not tell how much of a guess was right.
    pub fn lookup(&self, key: &[u8]) -> Option<Role> {
        let mut found = None;
        for (configured, role) in self.keys.iter() {
            if constant_time_eq(configured, key) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Whether two byte strings are equal, in time that depends only on their
/// lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An API key as a request presents it.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// Neither `authorization: Bearer` nor `x-api-key`.
    Nothing,
    /// The key.
    Key(&'a [u8]),
    /// A header is there but holds no usable key (an empty one, or both
    /// headers with different keys).
    Unreadable,
}

/// The API key of `authorization: Bearer KEY` or `x-api-key: KEY`. An
/// `authorization` of another scheme (Basic, which the HTTP door reads as a
/// write key) is not an API key.
pub fn presented_api_key(headers: &http::HeaderMap) -> Presented<'_> {
    let mut found: Option<&[u8]> = None;
    let bearer = headers.get_all(http::header::AUTHORIZATION).iter().filter_map(|v| {
        let bytes = v.as_bytes();
        let scheme = bytes.get(..7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then(|| bytes[7..].trim_ascii())
    });
    let x_api_key = headers.get_all("x-api-key").iter().map(|v| v.as_bytes().trim_ascii());
    for key in bearer.chain(x_api_key) {
        if key.is_empty() || found.is_some_and(|f| f != key) {
            return Presented::Unreadable;
        }
        found = Some(key);
    }
    found.map_or(Presented::Nothing, Presented::Key)
}

/// Who made a request, as the auth layer found: left in the request's
/// extensions for the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No keys are configured: everyone may do everything.
    Open,
    /// A configured key of this role.
    Key(Role),
}

impl Caller {
    /// Whether the caller may do what `role` allows.
    pub fn may(self, role: Role) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(own) => own.allows(role),
        }
    }
}

/// The role each method of `cohort.v1` needs. Listed in the README's
/// table; a method missing here needs `admin`.
pub const GRPC_METHODS: &[(&str, Role)] = &[
    ("/cohort.v1.Ingest/IngestBatch", Role::Ingest),
    ("/cohort.v1.Ingest/IngestStream", Role::Ingest),
    ("/cohort.v1.Query/Count", Role::Read),
    ("/cohort.v1.Query/Check", Role::Read),
    ("/cohort.v1.Query/Members", Role::Read),
    ("/cohort.v1.Query/Breakdown", Role::Read),
    ("/cohort.v1.Query/GetProfile", Role::Read),
    ("/cohort.v1.Segments/CreateSegment", Role::Admin),
    ("/cohort.v1.Segments/GetSegment", Role::Read),
    ("/cohort.v1.Segments/ListSegments", Role::Read),
    ("/cohort.v1.Segments/DeleteSegment", Role::Admin),
    ("/cohort.v1.Admin/Status", Role::Read),
    ("/cohort.v1.Admin/GetSchema", Role::Read),
    ("/cohort.v1.Admin/ApplySchema", Role::Admin),
    ("/cohort.v1.Admin/ListRejected", Role::Admin),
    ("/cohort.v1.Admin/ListMerges", Role::Admin),
    ("/cohort.v1.Admin/SetMember", Role::Admin),
    ("/cohort.v1.Admin/MoveReplica", Role::Admin),
    ("/cohort.v1.Admin/Rebalance", Role::Admin),
];

/// The services that need no key: health checks and reflection.
const OPEN_SERVICES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// The role a gRPC request path needs; `None` for the open services.
pub fn grpc_role(path: &str) -> Option<Role> {
    if OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
        return None;
    }
    Some(GRPC_METHODS.iter().find(|(method, _)| *method == path).map_or(Role::Admin, |(_, role)| *role))
}

/// Decides a gRPC request: the caller (`None` for an open service while keys
/// are configured: it is nobody in particular), or the status it is refused
/// with.
pub fn check_grpc(
    keys: &ApiKeys,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<Option<Caller>, tonic::Status> {
    if keys.is_empty() {
        return Ok(Some(Caller::Open));
    }
    let Some(needed) = grpc_role(path) else {
        return Ok(None);
    };
    let role = match presented_api_key(headers) {
        Presented::Nothing => {
            return Err(status(ServerError::Unauthenticated(format!(
                "{path} needs an API key with the {needed} role: send it as `authorization: Bearer KEY` or `x-api-key: KEY` metadata (cohort: --api-key or COHORT_API_KEY)"
            ))))
        }
        Presented::Unreadable => {
            return Err(status(ServerError::Unauthenticated(
                "the API key metadata is empty, or `authorization` and `x-api-key` disagree".into(),
            )))
        }
        Presented::Key(key) => keys.lookup(key).ok_or_else(|| {
            status(ServerError::Unauthenticated("invalid API key: this node has no such key".into()))
        })?,
    };
    if !role.allows(needed) {
        return Err(status(ServerError::PermissionDenied(format!(
            "{path} needs an API key with the {needed} role (or admin); this key has the {role} role"
        ))));
    }
    Ok(Some(Caller::Key(role)))
}

/// The tower layer that checks the API key of every gRPC request (see the
/// module's documentation).
#[derive(Clone, Debug)]
pub struct GrpcAuthLayer {
    keys: ApiKeys,
}

impl GrpcAuthLayer {
    /// A layer accepting `keys`; with none, everything passes.
    pub fn new(keys: ApiKeys) -> GrpcAuthLayer {
        GrpcAuthLayer { keys }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth { inner, keys: self.keys.clone() }
    }
}

/// The service of [`GrpcAuthLayer`] around the gRPC routes.
#[derive(Clone, Debug)]
pub struct GrpcAuth<S> {
    inner: S,
    keys: ApiKeys,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match check_grpc(&self.keys, request.uri().path(), request.headers()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // The clone is ready only after its own poll_ready; the one
                // that was polled is used and the clone kept for next time
                // (tower's documented pattern).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(&parse_keys_env("ik:ingest, rk:read,ak:admin").unwrap()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_environment_lists_keys_and_roles() {
        let keys = parse_keys_env("a:admin, b:c:read,,").unwrap();
        assert_eq!(keys[0], ApiKeyConfig { key: "a".into(), role: Role::Admin });
        assert_eq!(keys[1], ApiKeyConfig { key: "b:c".into(), role: Role::Read }, "the last : splits");
        assert_eq!(keys.len(), 2);
        assert_eq!(
            parse_keys_env("a:admin,b:root").unwrap_err().to_string(),
            "COHORT_API_KEYS: entry 2 has the role \"root\"; the roles are ingest, read, admin"
        );
        assert!(matches!(parse_keys_env("lonely").unwrap_err(), AuthError::NotKeyRole { entry: 1, .. }));
    }

    #[test]
    fn bad_keys_are_refused_by_position() {
        let c = |k: &str, role| ApiKeyConfig { key: k.into(), role };
        assert_eq!(
            ApiKeys::new(&[c("", Role::Read)]).unwrap_err(),
            AuthError::EmptyKey { origin: "api_keys", entry: 1 }
        );
        assert!(matches!(ApiKeys::new(&[c("a b", Role::Read)]), Err(AuthError::UnsendableKey { .. })));
        let err = ApiKeys::new(&[c("k", Role::Read), c("k", Role::Admin)]).unwrap_err();
        assert!(!err.to_string().contains("\"k\""), "{err}");
        assert!(matches!(err, AuthError::Conflict { entry: 2, first: 1, .. }));
        assert_eq!(ApiKeys::new(&[c("k", Role::Read), c("k", Role::Read)]).unwrap().keys.len(), 1);
        assert_eq!(format!("{:?}", keys()), "ApiKeys(3 keys)");
    }

    #[test]
    fn lookup_finds_exact_keys_only() {
        let keys = keys();
        assert_eq!(keys.lookup(b"ak"), Some(Role::Admin));
        assert_eq!(keys.lookup(b"rk"), Some(Role::Read));
        assert_eq!(keys.lookup(b"r"), None);
        assert_eq!(keys.lookup(b"rkk"), None);
        assert_eq!(keys.lookup(b""), None);
    }

    #[test]
    fn admin_allows_everything_and_the_others_only_themselves() {
        for needed in Role::ALL {
            assert!(Role::Admin.allows(needed));
        }
        assert!(
            Role::Read.allows(Role::Read)
                && !Role::Read.allows(Role::Ingest)
                && !Role::Read.allows(Role::Admin)
        );
        assert!(Role::Ingest.allows(Role::Ingest) && !Role::Ingest.allows(Role::Read));
    }

    #[test]
    fn keys_are_read_from_bearer_or_x_api_key() {
        assert_eq!(presented_api_key(&headers(&[])), Presented::Nothing);
        assert_eq!(presented_api_key(&headers(&[("authorization", "Bearer k1")])), Presented::Key(b"k1"));
        assert_eq!(presented_api_key(&headers(&[("authorization", "bearer  k1 ")])), Presented::Key(b"k1"));
        assert_eq!(presented_api_key(&headers(&[("x-api-key", "k2")])), Presented::Key(b"k2"));
        assert_eq!(presented_api_key(&headers(&[("authorization", "Basic azE6")])), Presented::Nothing);
        assert_eq!(
            presented_api_key(&headers(&[("authorization", "Bearer k1"), ("x-api-key", "k2")])),
            Presented::Unreadable
        );
        assert_eq!(
            presented_api_key(&headers(&[("authorization", "Bearer k1"), ("x-api-key", "k1")])),
            Presented::Key(b"k1")
        );
        assert_eq!(presented_api_key(&headers(&[("x-api-key", " ")])), Presented::Unreadable);
    }

    #[test]
    fn every_method_has_its_role_and_unknown_ones_need_admin() {
        assert_eq!(grpc_role("/cohort.v1.Ingest/IngestBatch"), Some(Role::Ingest));
        assert_eq!(grpc_role("/cohort.v1.Admin/ApplySchema"), Some(Role::Admin));
        assert_eq!(grpc_role("/cohort.v1.Admin/SomethingNew"), Some(Role::Admin));
        assert_eq!(grpc_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(grpc_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), None);
        // Every method of the proto is listed.
        let proto = include_str!("../../proto/cohort/v1/cohort.proto");
        let mut service = "";
        let mut listed = 0;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap_or("").trim();
                let path = format!("/cohort.v1.{service}/{method}");
                assert!(GRPC_METHODS.iter().any(|(m, _)| *m == path), "{path} has no role in GRPC_METHODS");
                listed += 1;
            }
        }
        assert_eq!(listed, GRPC_METHODS.len());
    }

    #[test]
    fn grpc_requests_are_refused_with_the_role_they_need() {
        let keys = keys();
        let path = "/cohort.v1.Admin/ApplySchema";
        let status = check_grpc(&keys, path, &headers(&[])).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = check_grpc(&keys, path, &headers(&[("x-api-key", "nope")])).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = check_grpc(&keys, path, &headers(&[("x-api-key", "rk")])).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("the admin role") && status.message().contains("the read role"));
        assert!(!status.message().contains("rk"), "{status:?}");
        let admin = check_grpc(&keys, path, &headers(&[("authorization", "Bearer ak")])).unwrap();
        assert_eq!(admin, Some(Caller::Key(Role::Admin)));
        assert_eq!(check_grpc(&ApiKeys::default(), path, &headers(&[])).unwrap(), Some(Caller::Open));
        assert_eq!(check_grpc(&keys, "/grpc.health.v1.Health/Check", &headers(&[])).unwrap(), None);
    }
}
