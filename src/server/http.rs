//! The Segment-compatible HTTP door (INGEST.md, "Doors"), for the SDKs and
//! pipelines that already speak Segment's tracking API.
//!
//! # Endpoints
//!
//! - `POST /v1/batch` (alias `/v1/b`): `{"batch": [...], "context": {...},
//!   "sentAt": ..., "writeKey": ...}`. Each message of `batch` is handed to
//!   the sink in order.
//! - `POST /v1/identify`, `/v1/track`, `/v1/page`, `/v1/screen`,
//!   `/v1/group`, `/v1/alias` (aliases `/v1/i`, `/v1/t`, `/v1/p`, `/v1/s`,
//!   `/v1/g`, `/v1/a`, as analytics.js uses): one message. Its `type` is set
//!   from the path when absent; a `type` that names another kind is a 400.
//! - `GET /health`: `200 ok`.
//!
//! # What a batch does to its messages
//!
//! Messages are handed over as they came, `writeKey` included, with two
//! additions taken from the batch envelope:
//!
//! - The batch-level `context` is deep-merged into each message's `context`:
//!   objects merge key by key at every depth, and wherever both hold a value
//!   that is not an object on both sides, the message's value wins (an
//!   explicit `null` in the message included). So a batch `context.traits`
//!   fills in the traits a message does not set itself.
//! - The batch-level `sentAt` (sent by analytics-python and analytics-ruby,
//!   which put it on the envelope rather than on each message) is copied into
//!   each message that has no `sentAt`, so INGEST.md's time rule can use it.
//!
//! An element of `batch` that is not an object is passed through unchanged:
//! the sink rejects it on its own, with its position, like any other bad
//! message, and the rest of the batch is applied.
//!
//! # Write keys and API keys
//!
//! A key may come as the HTTP Basic user name (password ignored, normally
//! empty), as `X-Write-Key`, as the body's top-level `writeKey`, or as an
//! API key's `Authorization: Bearer` or `X-Api-Key`. A write key's places
//! accept a configured write key or an API key whose role allows ingest
//! (`ingest` or `admin`; see [`super::auth`]), so an SDK that can only send
//! a write key can send an ingest API key as one; an API key's places
//! accept API keys only. With
//! neither write keys nor API keys configured every request is accepted,
//! with or without a key. Otherwise a request must present at least one
//! key, and every key it presents must be accepted: an unknown key is a
//! 401, an API key of another role (`read`) a 403 that names the role
//! needed. Keys in headers are checked by one layer before any handler runs
//! and before the body is read, so an unauthorised client cannot make the
//! server read and decompress a large body; a key carried only in the body
//! is necessarily checked after parsing, so such a request with a body that
//! is not JSON gets a 400 rather than a 401. `GET /health` needs no key.
//!
//! # Limits
//!
//! The request body is read up to `max_batch_bytes`, both as sent and after
//! gzip decompression (a gzip bomb stops at `max_batch_bytes + 1` bytes of
//! output). A message's size is the length of its JSON serialization as
//! received, before the batch context is merged in (the sender controls the
//! former, not the latter). Over either limit is a 413 and nothing of the
//! request reaches the sink. Since every message is at least 2 bytes (`{}`),
//! the body limit also bounds the number of messages in a batch.
//!
//! # Responses
//!
//! All bodies are JSON in Segment's shape. 200: `{"success": true,
//! "applied": n, "duplicates": n, "rejected": n}`, where `rejected` counts
//! the sink's rejection records (whole messages and single fields); the
//! rejections themselves are kept by the sink for operators, as Segment does,
//! not returned. Errors: `{"success": false, "error": "..."}` with the status
//! chosen by [`HttpError::status`].

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json as JsonBody, Router};
use serde_json::{json, Map, Value as Json};
use thiserror::Error;
use tokio_stream::StreamExt;

use super::auth::ApiKeys;
use super::status::{code, ServerError};
use crate::ingest::{IngestError, IngestReport, IngestSink, Source};
use crate::node::Role;

pub mod conn;

/// Configuration of the HTTP door.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Accepted write keys. With no API keys either, any key is accepted
    /// (and a missing key too).
    pub write_keys: Vec<String>,
    /// The node's API keys; those whose role allows ingest are accepted
    /// wherever a write key is.
    pub api_keys: ApiKeys,
    /// Largest message, bytes of JSON (default 32 * 1024).
    pub max_message_bytes: usize,
    /// Largest request body after decompression (default 500 * 1024). The
    /// body as sent is held to the same limit.
    pub max_batch_bytes: usize,
    /// Longest wait for a request's header, in full, milliseconds; 0 turns
    /// it off (default 10 000). See [`conn`].
    pub header_timeout_ms: u64,
    /// Longest time a connection may move no byte, milliseconds; 0 turns it
    /// off (default 60 000). See [`conn`].
    pub idle_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            write_keys: Vec::new(),
            max_message_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            api_keys: ApiKeys::default(),
        }
    }
}

/// Why the HTTP door refused a request. Each variant maps to one status in
/// [`HttpError::status`]; its `Display` is the `error` of the response body.
#[derive(Debug, Error)]
pub enum HttpError {
    /// `Content-Encoding` other than `gzip` or `identity`.
    #[error("unsupported Content-Encoding {0:?}: send gzip or no encoding")]
    UnsupportedEncoding(String),
    /// The body could not be read off the connection.
    #[error("could not read the request body: {0}")]
    ReadBody(String),
    /// The body says it is gzip but does not decompress.
    #[error("invalid gzip body: {0}")]
    InvalidGzip(String),
    /// The body is not JSON; serde's message gives line and column.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object, found {found}")]
    NotObject {
        /// The JSON kind found (`array`, `string`, ...).
        found: &'static str,
    },
    /// A batch body without `batch`.
    #[error("body has no `batch` array")]
    BatchMissing,
    /// A batch body whose `batch` is not an array.
    #[error("`batch` must be an array, found {found}")]
    BatchNotArray {
        /// The JSON kind found.
        found: &'static str,
    },
    /// The batch-level `context` is not an object.
    #[error("`context` must be an object, found {found}")]
    ContextNotObject {
        /// The JSON kind found.
        found: &'static str,
    },
    /// A single-message endpoint got a message whose `type` is not a string.
    #[error("`type` must be a string, found {found}")]
    TypeNotString {
        /// The JSON kind found.
        found: &'static str,
    },
    /// A single-message endpoint got a message of another type.
    #[error("message has type {found:?} but was sent to /v1/{endpoint}")]
    TypeMismatch {
        /// The type the path names.
        endpoint: &'static str,
        /// The message's `type`.
        found: String,
    },
    /// No key presented while keys are configured.
    #[error("missing write key (or API key with the ingest role)")]
    MissingWriteKey,
    /// A presented key is neither a write key nor an API key; the key is
    /// not echoed.
    #[error("invalid write key (from {location})")]
    InvalidWriteKey {
        /// Where the key came from: `Authorization`, `X-Write-Key`,
        /// `X-Api-Key`, `writeKey`.
        location: &'static str,
    },
    /// A presented API key's role does not allow ingest.
    #[error("the API key (from {location}) has the {role} role; these endpoints need a write key or an API key with the ingest role (or admin)")]
    WrongRole {
        /// Where the key came from.
        location: &'static str,
        /// The key's role.
        role: Role,
    },
    /// The body is over `max_batch_bytes`, as sent or once decompressed.
    #[error("request body is over the limit of {limit_bytes} bytes{}", if *.decompressed { " once decompressed" } else { "" })]
    BodyTooLarge {
        /// The limit.
        limit_bytes: usize,
        /// Whether the decompressed body is what went over.
        decompressed: bool,
    },
    /// A message is over `max_message_bytes`.
    #[error("message{} is {size_bytes} bytes of JSON, over the limit of {limit_bytes}", match .position { Some(p) => format!(" at position {p} (0-based) of the batch"), None => String::new() })]
    MessageTooLarge {
        /// 0-based position in the batch; `None` for a single-message
        /// endpoint.
        position: Option<usize>,
        /// The message's serialized size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The sink refused the whole request.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The task running the sink call ended without an answer (it panicked).
    #[error("ingest task failed: {0}")]
    IngestTask(String),
}

impl HttpError {
    /// The status this error is answered with: 400 for a body that cannot be
    /// understood, 401 for a missing or unknown key, 403 for an API key of
    /// another role, 413 for the size limits, 415 for an
    /// unknown encoding, and for the sink's errors the HTTP status of the
    /// gRPC code [`super::status::code`] gives them: 503 when the node cannot
    /// take writes now (`UNAVAILABLE`: SDKs retry 5xx), 500 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::ReadBody(_)
            | HttpError::InvalidGzip(_)
            | HttpError::NotJson(_)
            | HttpError::NotObject { .. }
            | HttpError::BatchMissing
            | HttpError::BatchNotArray { .. }
            | HttpError::ContextNotObject { .. }
            | HttpError::TypeNotString { .. }
            | HttpError::TypeMismatch { .. } => StatusCode::BAD_REQUEST,
            HttpError::MissingWriteKey | HttpError::InvalidWriteKey { .. } => StatusCode::UNAUTHORIZED,
            HttpError::WrongRole { .. } => StatusCode::FORBIDDEN,
            HttpError::BodyTooLarge { .. } | HttpError::MessageTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            HttpError::Ingest(e) => match code(&ServerError::Ingest(e.clone())) {
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            HttpError::IngestTask(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        // `code` and `message` are what Segment's and RudderStack's SDKs
        // read from an error reply.
        let status = self.status();
        let body = json!({
            "success": false,
            "error": self.to_string(),
            "code": status.canonical_reason().unwrap_or("error"),
            "message": self.to_string(),
        });
        if status.is_server_error() {
            tracing::warn!(door = "http", status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::info!(door = "http", status = status.as_u16(), error = %self, "request refused");
        }
        let mut response = (status, JsonBody(body)).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cohort\""));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// What every handler shares.
struct Door {
    sink: Arc<dyn IngestSink>,
    config: HttpConfig,
}

/// The single-message endpoints: the `type` each sets, and its short path.
const SINGLE_KINDS: [(&str, &str); 6] =
    [("identify", "i"), ("track", "t"), ("page", "p"), ("screen", "s"), ("group", "g"), ("alias", "a")];

/// The door's routes, ready to be served or tested with `oneshot`. Every
/// route but `/health` is behind [`authenticate`].
pub fn router(sink: Arc<dyn IngestSink>, config: HttpConfig) -> Router {
    let door = Arc::new(Door { sink, config });
    let mut router = Router::new().route("/v1/batch", post(batch)).route("/v1/b", post(batch));
    for (kind, short) in SINGLE_KINDS {
        router = router
            .route(&format!("/v1/{kind}"), single_route(kind))
            .route(&format!("/v1/{short}"), single_route(kind));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(door.clone(), authenticate))
        .route("/health", get(|| async { "ok" }))
        .with_state(door)
}

/// The layer in front of every ingest route: checks the keys carried in
/// headers before the handler runs (and so before the body is read).
async fn authenticate(State(door): State<Arc<Door>>, request: Request, next: Next) -> Response {
    match check_header_keys(&door.config, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Serves the door on `listener` (plain TCP, or a
/// [`TlsListener`](super::tls::TlsListener) whose connections have done
/// their handshake) until `shutdown` completes, then lets requests in
/// flight finish; connections are held to the configured header and idle
/// timeouts ([`conn`]).
pub async fn serve<L: axum::serve::Listener>(
    listener: L,
    sink: Arc<dyn IngestSink>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeouts = timeouts(&config);
    conn::serve(listener, router(sink, config), timeouts, shutdown).await
}

/// The connection timeouts of `config` (0 turns one off).
fn timeouts(config: &HttpConfig) -> conn::Timeouts {
    let millis = |ms: u64| (ms > 0).then(|| std::time::Duration::from_millis(ms));
    conn::Timeouts { header: millis(config.header_timeout_ms), idle: millis(config.idle_timeout_ms) }
}

/// The handler of one single-message endpoint.
fn single_route(kind: &'static str) -> MethodRouter<Arc<Door>> {
    post(move |State(door): State<Arc<Door>>, headers: HeaderMap, body: Body| async move {
        respond(single(&door, &headers, body, kind).await)
    })
}

async fn batch(State(door): State<Arc<Door>>, headers: HeaderMap, body: Body) -> Response {
    respond(batch_inner(&door, &headers, body).await)
}

fn respond(result: Result<IngestReport, HttpError>) -> Response {
    match result {
        Ok(report) => JsonBody(json!({
            "success": true,
            "applied": report.applied,
            "duplicates": report.duplicates,
            "rejected": report.rejections.len(),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn batch_inner(door: &Door, headers: &HeaderMap, body: Body) -> Result<IngestReport, HttpError> {
    let received_ms = now_ms();
    let mut envelope = read_object(door, headers, body).await?;
    check_body_key(&door.config, headers, &envelope)?;

    let batch = match envelope.remove("batch") {
        Some(Json::Array(batch)) => batch,
        Some(other) => return Err(HttpError::BatchNotArray { found: kind_of(&other) }),
        None => return Err(HttpError::BatchMissing),
    };
    let context = match envelope.remove("context") {
        None | Some(Json::Null) => None,
        Some(Json::Object(context)) => Some(context),
        Some(other) => return Err(HttpError::ContextNotObject { found: kind_of(&other) }),
    };
    let sent_at = envelope.remove("sentAt").filter(|v| !v.is_null());

    // Every size is checked before anything is handed over: a 413 means the
    // sink saw nothing of the request.
    for (position, message) in batch.iter().enumerate() {
        let size_bytes = json_len(message);
        if size_bytes > door.config.max_message_bytes {
            return Err(HttpError::MessageTooLarge {
                position: Some(position),
                size_bytes,
                limit_bytes: door.config.max_message_bytes,
            });
        }
    }

    let mut messages = batch;
    for message in &mut messages {
        // Non-objects go through untouched; the sink rejects them by position.
        let Json::Object(fields) = message else { continue };
        if let Some(context) = &context {
            match fields.get_mut("context") {
                None | Some(Json::Null) => {
                    fields.insert("context".to_owned(), Json::Object(context.clone()));
                }
                Some(Json::Object(own)) => merge_defaults(own, context),
                // A message context that is not an object wins as it is.
                Some(_) => {}
            }
        }
        if let Some(sent_at) = &sent_at {
            if fields.get("sentAt").is_none_or(Json::is_null) {
                fields.insert("sentAt".to_owned(), sent_at.clone());
            }
        }
    }
    if messages.is_empty() {
        return Ok(IngestReport::default());
    }
    ingest(door, messages, received_ms).await
}

async fn single(
    door: &Door,
    headers: &HeaderMap,
    body: Body,
    kind: &'static str,
) -> Result<IngestReport, HttpError> {
    let received_ms = now_ms();
    let mut message = read_object(door, headers, body).await?;
    check_body_key(&door.config, headers, &message)?;

    let size_bytes = json_len_map(&message);
    if size_bytes > door.config.max_message_bytes {
        return Err(HttpError::MessageTooLarge {
            position: None,
            size_bytes,
            limit_bytes: door.config.max_message_bytes,
        });
    }
    match message.get("type") {
        None | Some(Json::Null) => {
            message.insert("type".to_owned(), Json::String(kind.to_owned()));
        }
        Some(Json::String(found)) if found == kind => {}
        Some(Json::String(found)) => {
            return Err(HttpError::TypeMismatch { endpoint: kind, found: found.clone() })
        }
        Some(other) => return Err(HttpError::TypeNotString { found: kind_of(other) }),
    }
    ingest(door, vec![Json::Object(message)], received_ms).await
}

/// Hands `messages` to the sink on a task of its own: once a request has
/// been accepted, a client that disconnects does not cancel the sink call
/// halfway through its batch (it will resend, and `messageId`
/// deduplication makes that safe).
async fn ingest(door: &Door, messages: Vec<Json>, received_ms: i64) -> Result<IngestReport, HttpError> {
    let sink = Arc::clone(&door.sink);
    let task = tokio::spawn(async move { sink.ingest(messages, received_ms, Source::Http).await });
    match task.await {
        Ok(result) => Ok(result?),
        Err(e) => Err(HttpError::IngestTask(e.to_string())),
    }
}

/// Reads and decompresses the body within the limits (the header keys were
/// checked by [`authenticate`]), and parses it as a JSON object.
async fn read_object(door: &Door, headers: &HeaderMap, body: Body) -> Result<Map<String, Json>, HttpError> {
    let limit_bytes = door.config.max_batch_bytes;
    let gzip = match headers.get(header::CONTENT_ENCODING) {
        None => false,
        Some(value) => {
            let value = String::from_utf8_lossy(value.as_bytes()).trim().to_ascii_lowercase();
            match value.as_str() {
                "" | "identity" => false,
                "gzip" | "x-gzip" => true,
                _ => return Err(HttpError::UnsupportedEncoding(value)),
            }
        }
    };

    // A declared length over the limit is refused before reading anything.
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(HttpError::BodyTooLarge { limit_bytes, decompressed: false });
    }
    let raw = read_limited(body, limit_bytes).await?;
    let bytes = if gzip { gunzip(&raw, limit_bytes)? } else { raw.to_vec() };

    match serde_json::from_slice::<Json>(&bytes) {
        Ok(Json::Object(object)) => Ok(object),
        Ok(other) => Err(HttpError::NotObject { found: kind_of(&other) }),
        Err(e) => Err(HttpError::NotJson(e.to_string())),
    }
}

/// Reads the body, failing as soon as it goes over `limit_bytes`.
async fn read_limited(body: Body, limit_bytes: usize) -> Result<Bytes, HttpError> {
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| HttpError::ReadBody(e.to_string()))?;
        total += chunk.len();
        if total > limit_bytes {
            return Err(HttpError::BodyTooLarge { limit_bytes, decompressed: false });
        }
        chunks.push(chunk);
    }
    if chunks.len() == 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut all = Vec::with_capacity(total);
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(all))
}

/// Decompresses a gzip body (several members, as `cat a.gz b.gz` makes, are
/// accepted), producing at most `limit_bytes + 1` bytes so that a gzip bomb
/// costs no more than a body at the limit. At most 500 KB by default, so it
/// runs inline rather than on a blocking thread.
fn gunzip(raw: &[u8], limit_bytes: usize) -> Result<Vec<u8>, HttpError> {
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    decoder
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| HttpError::InvalidGzip(e.to_string()))?;
    if out.len() > limit_bytes {
        return Err(HttpError::BodyTooLarge { limit_bytes, decompressed: true });
    }
    Ok(out)
}

/// Whether this door checks keys at all: it does as soon as write keys or
/// API keys are configured.
fn keys_required(config: &HttpConfig) -> bool {
    !config.write_keys.is_empty() || !config.api_keys.is_empty()
}

/// Checks the keys carried in headers (Basic user name, Bearer token,
/// `X-Write-Key`, `X-Api-Key`): every one presented must be accepted.
/// Whether any key was presented at all is decided once the body's
/// `writeKey` is known.
fn check_header_keys(config: &HttpConfig, headers: &HeaderMap) -> Result<(), HttpError> {
    if !keys_required(config) {
        return Ok(());
    }
    for (location, key) in header_keys(headers) {
        match key {
            Some(key) => check_key(config, &key, location)?,
            None => return Err(HttpError::InvalidWriteKey { location }),
        }
    }
    Ok(())
}

/// Checks the body's `writeKey` and that some key was presented.
fn check_body_key(
    config: &HttpConfig,
    headers: &HeaderMap,
    body: &Map<String, Json>,
) -> Result<(), HttpError> {
    if !keys_required(config) {
        return Ok(());
    }
    match body.get("writeKey") {
        None | Some(Json::Null) => {
            if header_keys(headers).is_empty() {
                return Err(HttpError::MissingWriteKey);
            }
            Ok(())
        }
        Some(Json::String(key)) => check_key(config, &Presented::WriteKey(key.clone()), "writeKey"),
        Some(_) => Err(HttpError::InvalidWriteKey { location: "writeKey" }),
    }
}

/// A key as a request presents it: in a write key's place or an API key's.
#[derive(Debug)]
enum Presented {
    /// Basic user name, `X-Write-Key`, `writeKey`.
    WriteKey(String),
    /// Bearer token, `X-Api-Key`.
    ApiKey(String),
}

/// The keys presented in headers, with where each came from; `None` for a
/// header that is present but unreadable (neither Basic nor Bearer, bad
/// base64, ...).
fn header_keys(headers: &HeaderMap) -> Vec<(&'static str, Option<Presented>)> {
    let mut keys = Vec::new();
    for value in headers.get_all(header::AUTHORIZATION) {
        let key =
            bearer_token(value).map(Presented::ApiKey).or_else(|| basic_user(value).map(Presented::WriteKey));
        keys.push(("Authorization", key));
    }
    let text = |value: &HeaderValue| value.to_str().ok().map(|s| s.trim().to_owned());
    for value in headers.get_all("x-write-key") {
        keys.push(("X-Write-Key", text(value).map(Presented::WriteKey)));
    }
    for value in headers.get_all("x-api-key") {
        keys.push(("X-Api-Key", text(value).map(Presented::ApiKey)));
    }
    keys
}

/// The token of a `Bearer` authorization.
fn bearer_token(value: &HeaderValue) -> Option<String> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The user name of a `Basic` authorization, the part before the first `:`.
fn basic_user(value: &HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(credentials.trim())?).ok()?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(user, _)| user);
    Some(user.to_owned())
}

/// Whether `key`, presented at `location`, may ingest: in a write key's
/// place a configured write key or an API key whose role allows ingest, in
/// an API key's place such an API key only. Every write key and every API
/// key is compared, in time that does not depend on where the bytes differ,
/// so the response time does not leak how much of a guess was right.
fn check_key(config: &HttpConfig, key: &Presented, location: &'static str) -> Result<(), HttpError> {
    let (key, write_place) = match key {
        Presented::WriteKey(key) => (key.as_bytes(), true),
        Presented::ApiKey(key) => (key.as_bytes(), false),
    };
    let mut write_key = false;
    for configured in &config.write_keys {
        write_key |= super::auth::constant_time_eq(configured.as_bytes(), key);
    }
    let api_role = config.api_keys.lookup(key);
    match api_role {
        _ if write_key && write_place => Ok(()),
        Some(role) if role.allows(Role::Ingest) => Ok(()),
        Some(role) => Err(HttpError::WrongRole { location, role }),
        None => Err(HttpError::InvalidWriteKey { location }),
    }
}

/// Decodes standard base64 (RFC 4648 §4), padding optional; `None` on any
/// other character. Only Basic credentials use it, hence no dependency.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let body = text.trim_end_matches('=').as_bytes();
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for group in body.chunks(4) {
        let mut acc = 0u32;
        for &c in group {
            acc = (acc << 6) | sextet(c)?;
        }
        // A group of n characters carries n * 6 bits, of which the first
        // (n - 1) bytes are data.
        let bits = group.len() * 6;
        acc <<= 24 - bits;
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

/// Fills `target` with what `defaults` has and it lacks, recursing where both
/// hold objects; everywhere else `target`'s value wins.
fn merge_defaults(target: &mut Map<String, Json>, defaults: &Map<String, Json>) {
    for (key, default) in defaults {
        match (target.get_mut(key), default) {
            (None, _) => {
                target.insert(key.clone(), default.clone());
            }
            (Some(Json::Object(own)), Json::Object(default)) => merge_defaults(own, default),
            (Some(_), _) => {}
        }
    }
}

/// Bytes of `value`'s compact JSON serialization, counted without building it.
fn json_len(value: &Json) -> usize {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

fn json_len_map(value: &Map<String, Json>) -> usize {
    let mut counter = ByteCounter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kind_of(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The server clock, milliseconds since the epoch. A clock set before 1970
/// reads as 0 rather than failing the request.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use axum::http::{Method, Request};
    use parking_lot::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;
    use crate::ingest::{BoxFuture, RejectionRecord};
    use crate::replication::ReplicationError;

    /// One call the sink received.
    #[derive(Debug)]
    struct Call {
        messages: Vec<Json>,
        received_ms: i64,
        source: Source,
    }

    /// A sink that records its calls and answers with a fixed result.
    struct RecordingSink {
        calls: Mutex<Vec<Call>>,
        answer: Result<IngestReport, IngestError>,
    }

    impl RecordingSink {
        fn new() -> Arc<Self> {
            Self::answering(Ok(IngestReport::default()))
        }

        fn answering(answer: Result<IngestReport, IngestError>) -> Arc<Self> {
            Arc::new(RecordingSink { calls: Mutex::new(Vec::new()), answer })
        }

        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock())
        }
    }

    impl IngestSink for RecordingSink {
        fn ingest(
            &self,
            messages: Vec<Json>,
            received_ms: i64,
            source: Source,
        ) -> BoxFuture<'_, Result<IngestReport, IngestError>> {
            self.calls.lock().push(Call { messages, received_ms, source });
            let answer = self.answer.clone();
            Box::pin(async move { answer })
        }
    }

    fn keyed(keys: &[&str]) -> HttpConfig {
        HttpConfig { write_keys: keys.iter().map(|k| k.to_string()).collect(), ..HttpConfig::default() }
    }

    fn post_json(path: &str, body: &Json) -> Request<Body> {
        post_bytes(path, serde_json::to_vec(body).unwrap())
    }

    fn post_bytes(path: &str, body: Vec<u8>) -> Request<Body> {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn basic(user: &str) -> String {
        // Test-only encoder, checked against the decoder and known vectors.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("{user}:");
        let mut out = String::new();
        for group in input.as_bytes().chunks(3) {
            let mut acc = 0u32;
            for (i, &b) in group.iter().enumerate() {
                acc |= u32::from(b) << (16 - 8 * i);
            }
            for i in 0..4 {
                if i <= group.len() {
                    out.push(ALPHABET[((acc >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    }

    async fn send(router: Router, request: Request<Body>) -> (StatusCode, Json) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    fn error_of(body: &Json) -> &str {
        assert_eq!(body["success"], json!(false), "{body}");
        body["error"].as_str().unwrap()
    }

    #[tokio::test]
    async fn batch_hands_over_messages_in_order_with_merged_context() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), HttpConfig::default());
        let body = json!({
            "batch": [
                {"type": "identify", "userId": "u1", "traits": {"a": 1}},
                {"type": "track", "userId": "u1", "event": "Bought",
                 "context": {"ip": "10.0.0.9", "traits": {"plan": "free"}, "library": "own"}},
                {"type": "page", "anonymousId": "x", "context": null, "sentAt": "2024-01-01T00:00:01Z"},
                "not an object",
            ],
            "context": {"ip": "1.2.3.4", "traits": {"plan": "pro", "tier": 2}, "library": {"name": "analytics-python"}},
            "sentAt": "2024-01-01T00:00:00Z",
            "writeKey": "anything",
        });
        let before = now_ms();
        let (status, reply) = send(app, post_json("/v1/batch", &body)).await;
        let after = now_ms();
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply, json!({"success": true, "applied": 0, "duplicates": 0, "rejected": 0}));

        let calls = sink.take();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.source, Source::Http);
        assert!(before <= call.received_ms && call.received_ms <= after);
        let batch_context = json!({"ip": "1.2.3.4", "traits": {"plan": "pro", "tier": 2}, "library": {"name": "analytics-python"}});
        assert_eq!(
            call.messages,
            vec![
                json!({"type": "identify", "userId": "u1", "traits": {"a": 1},
                       "context": batch_context, "sentAt": "2024-01-01T00:00:00Z"}),
                // The message's own keys win, at every depth.
                json!({"type": "track", "userId": "u1", "event": "Bought",
                       "context": {"ip": "10.0.0.9", "traits": {"plan": "free", "tier": 2}, "library": "own"},
                       "sentAt": "2024-01-01T00:00:00Z"}),
                json!({"type": "page", "anonymousId": "x", "context": batch_context,
                       "sentAt": "2024-01-01T00:00:01Z"}),
                json!("not an object"),
            ]
        );
    }

    #[tokio::test]
    async fn reply_counts_come_from_the_report() {
        let rejection = RejectionRecord {
            position: 1,
            field: String::new(),
            reason: "no userId or anonymousId".into(),
            message_id: None,
            received_ms: 0,
            source: Source::Http,
        };
        let report =
            IngestReport { applied: 3, duplicates: 2, rejections: vec![rejection.clone(), rejection] };
        let app = router(RecordingSink::answering(Ok(report)), HttpConfig::default());
        let (status, reply) = send(app, post_json("/v1/batch", &json!({"batch": [{}]}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply, json!({"success": true, "applied": 3, "duplicates": 2, "rejected": 2}));
    }

    #[tokio::test]
    async fn empty_batch_is_accepted_without_calling_the_sink() {
        let sink = RecordingSink::new();
        let (status, _) =
            send(router(sink.clone(), HttpConfig::default()), post_json("/v1/batch", &json!({"batch": []})))
                .await;
        assert_eq!(status, StatusCode::OK);
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn each_single_endpoint_sets_its_type() {
        for (kind, short) in SINGLE_KINDS {
            for path in [format!("/v1/{kind}"), format!("/v1/{short}")] {
                let sink = RecordingSink::new();
                let app = router(sink.clone(), HttpConfig::default());
                let (status, reply) =
                    send(app, post_json(&path, &json!({"userId": "u1", "writeKey": "k"}))).await;
                assert_eq!(status, StatusCode::OK, "{path}: {reply}");
                let calls = sink.take();
                assert_eq!(calls.len(), 1, "{path}");
                assert_eq!(calls[0].source, Source::Http);
                assert_eq!(
                    calls[0].messages,
                    vec![json!({"type": kind, "userId": "u1", "writeKey": "k"})],
                    "{path}"
                );
            }
        }
    }

    #[tokio::test]
    async fn single_endpoint_keeps_a_matching_type_and_refuses_another() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), HttpConfig::default());
        let (status, _) =
            send(app.clone(), post_json("/v1/track", &json!({"type": "track", "userId": "u", "event": "E"})))
                .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sink.take().len(), 1);

        let (status, reply) =
            send(app.clone(), post_json("/v1/track", &json!({"type": "identify", "userId": "u"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error_of(&reply), "message has type \"identify\" but was sent to /v1/track");
        let (status, reply) = send(app, post_json("/v1/t", &json!({"type": 3, "userId": "u"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&reply).contains("`type` must be a string"));
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn gzip_body_is_accepted() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), HttpConfig::default());
        let body =
            serde_json::to_vec(&json!({"batch": [{"type": "track", "userId": "u", "event": "E"}]})).unwrap();
        let mut request = post_bytes("/v1/batch", gzip(&body));
        request.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (status, reply) = send(app, request).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(sink.take()[0].messages, vec![json!({"type": "track", "userId": "u", "event": "E"})]);
    }

    #[tokio::test]
    async fn invalid_gzip_is_a_400() {
        let sink = RecordingSink::new();
        let mut request = post_bytes("/v1/batch", b"{\"batch\": []}".to_vec());
        request.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (status, reply) = send(router(sink.clone(), HttpConfig::default()), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&reply).starts_with("invalid gzip body"), "{reply}");
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn unknown_encoding_is_a_415() {
        let mut request = post_bytes("/v1/batch", b"{\"batch\": []}".to_vec());
        request.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        let (status, reply) = send(router(RecordingSink::new(), HttpConfig::default()), request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(error_of(&reply).contains("\"br\""));
    }

    #[tokio::test]
    async fn body_that_is_not_json_is_a_400_with_its_position() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), HttpConfig::default());
        let (status, reply) =
            send(app.clone(), post_bytes("/v1/batch", b"{\"batch\": [\n  {\"a\": }]}".to_vec())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = error_of(&reply);
        assert!(error.starts_with("body is not valid JSON"), "{error}");
        assert!(error.contains("line 2 column 9"), "{error}");

        let (status, reply) = send(app.clone(), post_bytes("/v1/identify", b"not json".to_vec())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&reply).contains("line 1 column 2"), "{reply}");
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn body_of_the_wrong_shape_is_a_400_saying_what() {
        let app = router(RecordingSink::new(), HttpConfig::default());
        let cases = [
            ("/v1/batch", json!([1, 2]), "body must be a JSON object, found an array"),
            ("/v1/identify", json!("x"), "body must be a JSON object, found a string"),
            ("/v1/batch", json!({"batch": {"a": 1}}), "`batch` must be an array, found an object"),
            ("/v1/batch", json!({}), "body has no `batch` array"),
            ("/v1/batch", json!({"batch": [], "context": 1}), "`context` must be an object, found a number"),
        ];
        for (path, body, expected) in cases {
            let (status, reply) = send(app.clone(), post_json(path, &body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error_of(&reply), expected);
        }
    }

    /// A batch request carrying `key` in one of the three places.
    fn with_key(place: &str, key: &str) -> Request<Body> {
        let mut body = json!({"batch": [{"type": "identify", "userId": "u"}]});
        if place == "body" {
            body["writeKey"] = json!(key);
        }
        let mut request = post_json("/v1/batch", &body);
        match place {
            "basic" => {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, HeaderValue::from_str(&basic(key)).unwrap());
            }
            "header" => {
                request.headers_mut().insert("x-write-key", HeaderValue::from_str(key).unwrap());
            }
            _ => {}
        }
        request
    }

    #[tokio::test]
    async fn bad_write_key_is_a_401_in_each_place() {
        for place in ["basic", "body", "header"] {
            let sink = RecordingSink::new();
            let app = router(sink.clone(), keyed(&["k1", "k2"]));
            let (status, reply) = send(app, with_key(place, "k3")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{place}");
            assert!(error_of(&reply).starts_with("invalid write key"), "{place}: {reply}");
            assert!(!error_of(&reply).contains("k3"), "the key is not echoed");
            assert!(sink.take().is_empty(), "{place}");
        }
    }

    #[tokio::test]
    async fn missing_or_unreadable_key_is_a_401_when_keys_are_configured() {
        let app = router(RecordingSink::new(), keyed(&["k1"]));
        let (status, reply) = send(app.clone(), with_key("none", "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_of(&reply), "missing write key (or API key with the ingest role)");

        // Bearer is an API key's place: a write key there is not one.
        let mut request = with_key("none", "");
        request.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        let (status, _) = send(app.clone(), request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // A good key does not excuse a bad one elsewhere in the request.
        let mut request = with_key("body", "k1");
        request.headers_mut().insert("x-write-key", HeaderValue::from_static("nope"));
        let (status, _) = send(app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    fn with_api_keys(write_keys: &[&str]) -> HttpConfig {
        let keys = crate::server::auth::parse_keys_env("ik:ingest,rk:read,ak:admin").unwrap();
        HttpConfig { api_keys: ApiKeys::new(&keys).unwrap(), ..keyed(write_keys) }
    }

    fn with_header(name: &'static str, value: &str) -> Request<Body> {
        let mut request = with_key("none", "");
        request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
        request
    }

    #[tokio::test]
    async fn api_keys_with_ingest_are_accepted_and_others_refused_by_role() {
        for write_keys in [&[][..], &["wk"][..]] {
            let config = with_api_keys(write_keys);
            for (request, expected) in [
                (with_key("none", ""), StatusCode::UNAUTHORIZED),
                (with_header("authorization", "Bearer ik"), StatusCode::OK),
                (with_header("x-api-key", "ak"), StatusCode::OK),
                (with_key("basic", "ik"), StatusCode::OK),
                (with_key("body", "ak"), StatusCode::OK),
                (with_header("authorization", "Bearer rk"), StatusCode::FORBIDDEN),
                (with_key("header", "rk"), StatusCode::FORBIDDEN),
                (with_header("x-api-key", "nope"), StatusCode::UNAUTHORIZED),
                (with_header("x-api-key", "wk"), StatusCode::UNAUTHORIZED),
                (with_key("header", "anything"), StatusCode::UNAUTHORIZED),
            ] {
                let sink = RecordingSink::new();
                let described = format!("{:?} with write keys {write_keys:?}", request.headers());
                let (status, reply) = send(router(sink.clone(), config.clone()), request).await;
                assert_eq!(status, expected, "{described}: {reply}");
                assert_eq!(sink.take().len(), usize::from(status == StatusCode::OK), "{described}");
                if status == StatusCode::FORBIDDEN {
                    assert!(error_of(&reply).contains("has the read role"), "{reply}");
                }
            }
        }
        let sink = RecordingSink::new();
        let (status, reply) =
            send(router(sink.clone(), with_api_keys(&["wk"])), with_key("basic", "wk")).await;
        assert_eq!(status, StatusCode::OK, "write keys still work beside API keys: {reply}");
    }

    #[tokio::test]
    async fn health_needs_no_key() {
        let request = Request::builder().method(Method::GET).uri("/health").body(Body::empty()).unwrap();
        let (status, _) = send(router(RecordingSink::new(), with_api_keys(&["wk"])), request).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn right_write_key_is_accepted_in_each_place() {
        for place in ["basic", "body", "header"] {
            let sink = RecordingSink::new();
            let app = router(sink.clone(), keyed(&["k1", "k2"]));
            let (status, reply) = send(app, with_key(place, "k2")).await;
            assert_eq!(status, StatusCode::OK, "{place}: {reply}");
            assert_eq!(sink.take().len(), 1, "{place}");
        }
    }

    #[tokio::test]
    async fn with_no_keys_configured_any_key_or_none_is_accepted() {
        for place in ["basic", "body", "header", "none"] {
            let sink = RecordingSink::new();
            let app = router(sink.clone(), HttpConfig::default());
            let (status, reply) = send(app, with_key(place, "whatever")).await;
            assert_eq!(status, StatusCode::OK, "{place}: {reply}");
            assert_eq!(sink.take().len(), 1, "{place}");
        }
    }

    fn small_limits() -> HttpConfig {
        HttpConfig { max_message_bytes: 100, max_batch_bytes: 1000, ..HttpConfig::default() }
    }

    #[tokio::test]
    async fn oversized_batch_is_a_413() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), small_limits());
        let batch: Vec<Json> =
            (0..30).map(|i| json!({"type": "identify", "userId": format!("user-{i}")})).collect();
        let body = serde_json::to_vec(&json!({ "batch": batch })).unwrap();
        assert!(body.len() > 1000);
        let (status, reply) = send(app.clone(), post_bytes("/v1/batch", body.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_of(&reply), "request body is over the limit of 1000 bytes");

        // Without a Content-Length the limit holds while streaming.
        let stream = tokio_stream::iter(
            body.chunks(64).map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
        );
        let request =
            Request::builder().method(Method::POST).uri("/v1/batch").body(Body::from_stream(stream)).unwrap();
        assert!(request.headers().get(header::CONTENT_LENGTH).is_none());
        let (status, _) = send(app, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn gzip_bomb_is_a_413() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), small_limits());
        let mut json_bytes = b"{\"batch\": [], \"pad\": \"".to_vec();
        json_bytes.extend(std::iter::repeat_n(b'a', 400_000));
        json_bytes.extend_from_slice(b"\"}");
        let compressed = gzip(&json_bytes);
        assert!(compressed.len() < 1000, "compresses to {}", compressed.len());
        let mut request = post_bytes("/v1/batch", compressed);
        request.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (status, reply) = send(app, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_of(&reply), "request body is over the limit of 1000 bytes once decompressed");
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn oversized_message_in_a_batch_is_a_413_naming_its_position() {
        let sink = RecordingSink::new();
        let app = router(sink.clone(), small_limits());
        let big = json!({"type": "identify", "userId": "u", "traits": {"bio": "x".repeat(100)}});
        let size = serde_json::to_vec(&big).unwrap().len();
        let body =
            json!({"batch": [{"type": "identify", "userId": "a"}, {"type": "identify", "userId": "b"}, big]});
        let (status, reply) = send(app, post_json("/v1/batch", &body)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            error_of(&reply),
            format!(
                "message at position 2 (0-based) of the batch is {size} bytes of JSON, over the limit of 100"
            )
        );
        assert!(sink.take().is_empty(), "nothing of a refused batch is handed over");
    }

    #[tokio::test]
    async fn message_at_the_limit_passes_and_one_byte_over_does_not() {
        // {"userId":"<n x's>"} is 13 + n bytes.
        let config = HttpConfig { max_message_bytes: 50, ..HttpConfig::default() };
        let sink = RecordingSink::new();
        let app = router(sink.clone(), config);
        let (status, _) =
            send(app.clone(), post_json("/v1/identify", &json!({"userId": "x".repeat(37)}))).await;
        assert_eq!(status, StatusCode::OK);
        let (status, reply) = send(app, post_json("/v1/identify", &json!({"userId": "x".repeat(38)}))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_of(&reply), "message is 51 bytes of JSON, over the limit of 50");
        assert_eq!(sink.take().len(), 1);
    }

    #[tokio::test]
    async fn sink_errors_map_to_503_and_500() {
        let app = router(
            RecordingSink::answering(Err(IngestError::Replication(ReplicationError::NotLeader {
                group: 5,
                name: "shard 3".into(),
                leader: None,
                leader_addr: None,
            }))),
            HttpConfig::default(),
        );
        let response =
            app.oneshot(post_json("/v1/track", &json!({"userId": "u", "event": "E"}))).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let reply: Json = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error_of(&reply), "group 5 (shard 3) has no leader on this node (leader: unknown)");

        let app = router(RecordingSink::answering(Err(IngestError::UnexpectedResult)), HttpConfig::default());
        let (status, reply) = send(app, post_json("/v1/batch", &json!({"batch": [{}]}))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error_of(&reply), "the catalog answered an ingest entry with an unexpected result");
    }

    #[tokio::test]
    async fn health_says_ok() {
        let request = Request::builder().uri("/health").body(Body::empty()).unwrap();
        let (status, body) = send(router(RecordingSink::new(), HttpConfig::default()), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!("ok"));
    }

    #[tokio::test]
    async fn serve_answers_on_loopback_and_stops_on_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sink = RecordingSink::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, sink.clone(), keyed(&["k"]), async {
            let _ = stopped.await;
        }));

        let body = r#"{"userId":"u","event":"E"}"#;
        let request = format!(
            "POST /v1/track HTTP/1.1\r\nHost: localhost\r\nX-Write-Key: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        // Parsed rather than compared as text: key order depends on
        // serde_json's `preserve_order` feature, which another crate may turn on.
        let (_, reply) = response.split_once("\r\n\r\n").unwrap();
        let reply: Json = serde_json::from_str(reply).unwrap();
        assert_eq!(reply, json!({"success": true, "applied": 0, "duplicates": 0, "rejected": 0}));
        assert_eq!(sink.take()[0].messages, vec![json!({"type": "track", "userId": "u", "event": "E"})]);

        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    }

    #[test]
    fn base64_decodes_standard_vectors() {
        // RFC 4648 §10.
        let vectors = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ];
        for (encoded, plain) in vectors {
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()), "{encoded}");
            assert_eq!(base64_decode(encoded.trim_end_matches('=')).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64_decode("+/+/").unwrap(), vec![0xfb, 0xff, 0xbf]);
        for bad in ["Z", "Zm9v!", "Zg===", "Zm 9v"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
        assert_eq!(
            basic_user(&HeaderValue::from_str(&basic("wk_live:1")).unwrap()).as_deref(),
            Some("wk_live")
        );
        assert_eq!(basic_user(&HeaderValue::from_static("basic d2s6")).as_deref(), Some("wk"));
        assert_eq!(
            basic_user(&HeaderValue::from_static("Basic d2s=")).as_deref(),
            Some("wk"),
            "no colon: all of it is the user"
        );
    }

    #[test]
    fn merge_defaults_is_deep_and_the_message_wins() {
        let mut own = json!({"a": 1, "o": {"x": 1, "n": {"p": 1}}, "s": "mine", "z": null});
        let defaults = json!({"a": 2, "b": 2, "o": {"x": 2, "y": 2, "n": {"q": 2}}, "s": {"k": 1}, "z": 3});
        merge_defaults(own.as_object_mut().unwrap(), defaults.as_object().unwrap());
        assert_eq!(
            own,
            json!({"a": 1, "b": 2, "o": {"x": 1, "y": 2, "n": {"p": 1, "q": 2}}, "s": "mine", "z": null})
        );
    }
}
