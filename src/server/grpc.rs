//! The gRPC doors (`cohort.v1`): Ingest, Query, Segments and Admin over a
//! [`Node`], plus the standard health service and server reflection.
//!
//! Errors carry the gRPC code that says what kind they are (a bad query is
//! `INVALID_ARGUMENT` and its message names the position; an unknown profile
//! `NOT_FOUND`; a shard that missed the deadline `DEADLINE_EXCEEDED`; a
//! write the node cannot commit now `UNAVAILABLE`), all given by
//! [`super::status`]. A request's `grpc-timeout` becomes the planner's
//! deadline.
//!
//! Every request passes [`GrpcAuthLayer`] first, which checks its API key
//! against the role its method needs (see [`super::auth`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{ApiKeys, Caller, GrpcAuthLayer};
use super::status::{status, ServerError};
use super::tls::TlsIdentity;
use crate::cluster::catalog::parse_now;
use crate::cluster::membership::{Member, MemberState};
use crate::cluster::placement::{Placement, ReplicaMove};
use crate::ingest::{IngestReport, RejectionRecord, Source};
use crate::model::{format_rfc3339_ms, Value};
use crate::node::{now_ms, Node, Role};
use crate::proto::v1 as pb;

pub use super::status::MAX_STATUS_MESSAGE_BYTES;

/// Largest gRPC message accepted (an ingest batch).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A request field the door refuses, as a status.
fn bad_request(message: impl Into<String>) -> Status {
    status(ServerError::BadRequest(message.into()))
}

/// Most digits a `grpc-timeout` value may have (gRPC over HTTP/2:
/// "TimeoutValue: positive integer as ASCII string of at most 8 digits").
const GRPC_TIMEOUT_DIGITS: usize = 8;

/// The duration a `grpc-timeout` value (`1-8 digits` then a unit `H`, `M`,
/// `S`, `m`, `u` or `n`) stands for, or why it is not one. The arithmetic is
/// checked, so no value can overflow.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "grpc-timeout {value:?} is not a timeout: {why} (1 to {GRPC_TIMEOUT_DIGITS} digits and a unit H, M, S, m, u or n)"
        )
    };
    let unit_at =
        value.len().checked_sub(1).filter(|&i| value.is_char_boundary(i)).ok_or_else(|| bad("empty"))?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the value is not a whole number"));
    }
    if digits.len() > GRPC_TIMEOUT_DIGITS {
        return Err(bad(&format!("{} digits", digits.len())));
    }
    // At most 8 digits, so it fits a u64; the products below are checked all
    // the same.
    let n: u64 = digits.parse().map_err(|_| bad("the value is not a whole number"))?;
    let too_long = || bad("too long");
    Ok(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        "M" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad(&format!("unknown unit {unit:?}"))),
    })
}

/// The request's deadline from its `grpc-timeout` header: `None` without
/// one, INVALID_ARGUMENT for a value that is not a timeout or that lies
/// past what the clock can represent.
/// The shards a partial answer left out, as the reply lists them.
fn missing_to_proto(missing: Vec<(u32, String)>) -> Vec<pb::MissingShard> {
    missing.into_iter().map(|(shard, reason)| pb::MissingShard { shard, reason }).collect()
}

pub(crate) fn deadline<T>(request: &Request<T>) -> Result<Option<Instant>, Status> {
    let Some(value) = request.metadata().get("grpc-timeout") else {
        return Ok(None);
    };
    let value =
        value.to_str().map_err(|_| bad_request("grpc-timeout is not ASCII text, so it is not a timeout"))?;
    let timeout = parse_grpc_timeout(value).map_err(bad_request)?;
    Instant::now()
        .checked_add(timeout)
        .map(Some)
        .ok_or_else(|| bad_request(format!("grpc-timeout {value:?} lies past the end of the server's clock")))
}

/// The door a batch came through: `cohort load` says so in the
/// `x-cohort-source` header; anything else is a gRPC client.
fn source_of<T>(request: &Request<T>) -> Source {
    match request.metadata().get("x-cohort-source").and_then(|v| v.to_str().ok()) {
        Some("load") => Source::Load,
        _ => Source::Grpc,
    }
}

fn now_of(text: &str) -> Result<i64, Status> {
    parse_now(text, now_ms()).map_err(status)
}

fn time_text(ms: Option<i64>) -> String {
    ms.map(format_rfc3339_ms).unwrap_or_default()
}

/// A value as JSON text.
pub fn value_json(v: &Value) -> String {
    match v {
        Value::Keyword(s) | Value::Text(s) => serde_json::Value::String(s.clone()).to_string(),
        // Whole numbers print as integers (`3`, not `3.0`), as they arrived.
        Value::Number(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => (*x as i64).to_string(),
        Value::Number(x) => serde_json::Number::from_f64(*x).map(|n| n.to_string()).unwrap_or_default(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(ms) => serde_json::Value::String(format_rfc3339_ms(*ms)).to_string(),
        Value::List(items) => serde_json::to_string(items).unwrap_or_default(),
    }
}

fn rejection(r: &RejectionRecord, offset: u64) -> pb::Rejection {
    pb::Rejection {
        position: r.position + offset,
        field: r.field.clone(),
        reason: r.reason.clone(),
        message_id: r.message_id.clone().unwrap_or_default(),
        received_at: format_rfc3339_ms(r.received_ms),
        source: r.source.name().to_string(),
    }
}

pub(super) fn reply(report: &IngestReport, offset: u64) -> pb::IngestReply {
    pb::IngestReply {
        applied: report.applied,
        duplicates: report.duplicates,
        rejections: report.rejections.iter().map(|r| rejection(r, offset)).collect(),
    }
}

/// All four services over one node.
#[derive(Clone)]
pub struct Services {
    node: Arc<Node>,
}

impl Services {
    /// Services over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Services { node }
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Services {
    async fn ingest_batch(
        &self,
        request: Request<pb::IngestBatchRequest>,
    ) -> Result<Response<pb::IngestReply>, Status> {
        let source = source_of(&request);
        let messages = request.into_inner().messages;
        let report = self.node.ingest_text(messages, now_ms(), source).await.map_err(status)?;
        Ok(Response::new(reply(&report, 0)))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<pb::IngestBatchRequest>>,
    ) -> Result<Response<pb::IngestReply>, Status> {
        // Read ahead and joined: see `ingest_stream`'s documentation.
        let source = source_of(&request);
        let reply =
            super::ingest_stream::ingest_stream(self.node.clone(), request.into_inner(), source).await?;
        Ok(Response::new(reply))
    }
}

type MembersStream = Pin<Box<dyn Stream<Item = Result<pb::MembersPage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::query_server::Query for Services {
    async fn count(&self, request: Request<pb::CountRequest>) -> Result<Response<pb::CountReply>, Status> {
        let deadline = deadline(&request)?;
        let r = request.into_inner();
        let now = now_of(&r.now)?;
        if r.expressions.is_empty() {
            return Err(bad_request("count: give at least one expression"));
        }
        let c = self
            .node
            .count(&r.expressions, now, r.max_staleness_ms, r.allow_partial, deadline)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CountReply {
            counts: c.counts,
            now: format_rfc3339_ms(now),
            universe: c.universe,
            staleness_ms: c.staleness_ms,
            missing_shards: missing_to_proto(c.missing),
        }))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckReply>, Status> {
        let deadline = deadline(&request)?;
        let r = request.into_inner();
        let now = now_of(&r.now)?;
        // One person's answer reads its writes, whichever node took them.
        let (profile_id, matches) =
            self.node.check(&r.profile, &r.expressions, now, deadline).await.map_err(status)?;
        Ok(Response::new(pb::CheckReply { matches, now: format_rfc3339_ms(now), profile_id }))
    }

    type MembersStream = MembersStream;

    async fn members(&self, request: Request<pb::MembersRequest>) -> Result<Response<MembersStream>, Status> {
        let deadline = deadline(&request)?;
        let r = request.into_inner();
        let now = now_of(&r.now)?;
        let page_size = match r.page_size {
            0 => 1000,
            n if n > 10_000 => return Err(bad_request("page_size: at most 10000")),
            n => n as usize,
        };
        // Check the expression before the stream starts, so that a bad one
        // is the call's error.
        self.node.planner.compile(std::slice::from_ref(&r.expression), now).map_err(status)?;
        let catalog_met = self.node.members_start(r.max_staleness_ms, deadline).await.map_err(status)?;
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut cursor = (!r.cursor.is_empty()).then(|| r.cursor.clone());
            let mut sent = 0u64;
            loop {
                let want = if r.limit == 0 { page_size } else { page_size.min((r.limit - sent) as usize) };
                let (page, met) = match node.members_page(
                    &runtime,
                    &r.expression,
                    &r.traits,
                    cursor.as_deref(),
                    want,
                    now,
                    r.max_staleness_ms,
                    deadline,
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(status(e)));
                        return;
                    }
                };
                sent += page.members.len() as u64;
                let done = page.cursor.is_none() || (r.limit != 0 && sent >= r.limit);
                cursor = page.cursor.clone();
                let out = pb::MembersPage {
                    members: page
                        .members
                        .into_iter()
                        .map(|m| pb::Member {
                            profile_id: m.profile,
                            user_id: m.user_id.unwrap_or_default(),
                            anonymous_ids: m.anonymous_ids,
                            traits: m.traits.iter().map(|(k, v)| (k.clone(), value_json(v))).collect(),
                        })
                        .collect(),
                    cursor: page.cursor.unwrap_or_default(),
                    staleness_ms: met.max(catalog_met),
                };
                if tx.blocking_send(Ok(out)).is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn breakdown(
        &self,
        request: Request<pb::BreakdownRequest>,
    ) -> Result<Response<pb::BreakdownReply>, Status> {
        let deadline = deadline(&request)?;
        let r = request.into_inner();
        let now = now_of(&r.now)?;
        let top = if r.top == 0 { 10 } else { r.top as usize };
        let b = self
            .node
            .breakdown(&r.trait_name, &r.expression, top, now, r.max_staleness_ms, r.allow_partial, deadline)
            .await
            .map_err(status)?;
        let (a, staleness_ms, missing_shards) = (b.answer, b.staleness_ms, missing_to_proto(b.missing));
        Ok(Response::new(pb::BreakdownReply {
            rows: a
                .rows
                .into_iter()
                .map(|(value, count)| pb::BreakdownRow {
                    value: serde_json::Value::String(value).to_string(),
                    count,
                })
                .collect(),
            missing: a.missing,
            total: a.total,
            now: format_rfc3339_ms(now),
            staleness_ms,
            missing_shards,
        }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let deadline = deadline(&request)?;
        let r = request.into_inner();
        let recent = if r.recent_events == 0 { 20 } else { r.recent_events as usize };
        let v = self.node.profile(&r.profile, recent, now_ms(), deadline).await.map_err(status)?;
        Ok(Response::new(pb::Profile {
            profile_id: v.profile,
            shard: v.shard,
            identifiers: v
                .identifiers
                .into_iter()
                .map(|(k, value)| pb::Identifier { kind: k.name().to_string(), value })
                .collect(),
            first_seen: time_text(v.first_seen),
            last_seen: time_text(v.last_seen),
            traits: v
                .traits
                .into_iter()
                .map(|(name, value, stamp)| pb::TraitValue {
                    name,
                    value: value.as_ref().map(value_json).unwrap_or_else(|| "null".into()),
                    written_at: format_rfc3339_ms(stamp.0),
                })
                .collect(),
            recent_events: v
                .recent_events
                .into_iter()
                .map(|e| pb::Event {
                    name: e.name,
                    time: format_rfc3339_ms(e.ts_ms),
                    properties: {
                        let map: serde_json::Map<String, serde_json::Value> = e
                            .properties
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    serde_json::from_str(&value_json(v)).unwrap_or(serde_json::Value::Null),
                                )
                            })
                            .collect();
                        serde_json::Value::Object(map).to_string()
                    },
                })
                .collect(),
            event_count: v.event_count,
            segments: v.segments,
        }))
    }
}

fn saved(s: &crate::cluster::catalog::SavedSegment) -> pb::SavedSegment {
    pb::SavedSegment {
        name: s.name.clone(),
        expression: s.expression.clone(),
        description: s.description.clone(),
        created_at: format_rfc3339_ms(s.created_ms),
    }
}

#[tonic::async_trait]
impl pb::segments_server::Segments for Services {
    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::SavedSegment>, Status> {
        let r = request.into_inner();
        self.node
            .create_segment(r.name.clone(), r.expression, r.description, now_ms())
            .await
            .map_err(status)?;
        let state = self.node.catalog.state.read();
        let s = state.segments.get(&r.name).ok_or_else(|| {
            // Another request deleted it in between.
            status(ServerError::NotFound(format!("saved segment {:?} was deleted as it was created", r.name)))
        })?;
        Ok(Response::new(saved(s)))
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::SavedSegment>, Status> {
        let name = request.into_inner().name;
        let state = self.node.catalog.state.read();
        let s = state
            .segments
            .get(&name)
            .ok_or_else(|| status(ServerError::NotFound(format!("no saved segment {name:?}"))))?;
        Ok(Response::new(saved(s)))
    }

    async fn list_segments(
        &self,
        _request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsReply>, Status> {
        let state = self.node.catalog.state.read();
        Ok(Response::new(pb::ListSegmentsReply { segments: state.segments.values().map(saved).collect() }))
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentReply>, Status> {
        self.node.delete_segment(request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteSegmentReply {}))
    }
}

/// Entries in a schema page when the request gives no limit.
const SCHEMA_PAGE_DEFAULT: usize = 1_000;

/// Most entries in a schema page.
const SCHEMA_PAGE_MAX: usize = 10_000;

/// About how many bytes of names a schema page holds (a quarter of gRPC's
/// usual 4 MB message limit).
const SCHEMA_PAGE_BYTES: usize = 1 << 20;

/// One page of the schema (see `GetSchemaRequest` in the proto).
fn schema_reply(node: &Node, request: &pb::GetSchemaRequest) -> Result<pb::SchemaReply, Status> {
    let from = match request.page_token.as_str() {
        "" => None,
        token => Some(crate::model::SchemaCursor::from_token(token).ok_or_else(|| {
            bad_request("page_token: not a token this node gave (pass next_page_token as it is)")
        })?),
    };
    let limit = match request.limit as usize {
        0 => SCHEMA_PAGE_DEFAULT,
        n => n.min(SCHEMA_PAGE_MAX),
    };
    let state = node.catalog.state.read();
    let page = state.schema.page(&request.prefix, from.as_ref(), limit, SCHEMA_PAGE_BYTES);
    let field = |name: &str, ty: crate::model::TraitType, declared: bool| pb::SchemaField {
        name: name.to_string(),
        r#type: ty.name().to_string(),
        declared,
    };
    let limits = state.limits;
    Ok(pb::SchemaReply {
        traits: page.traits.iter().map(|(n, t)| field(n, *t, state.declared.contains(*n))).collect(),
        events: page
            .events
            .iter()
            .map(|(name, props)| pb::EventSchema {
                name: name.to_string(),
                properties: props.iter().map(|(n, t)| field(n, *t, false)).collect(),
            })
            .collect(),
        next_page_token: page.next.as_ref().map(|c| c.to_token()).unwrap_or_default(),
        trait_count: state.schema.trait_count() as u64,
        event_count: state.schema.event_count() as u64,
        property_count: state.schema.property_count() as u64,
        caps: Some(pb::SchemaCaps {
            max_traits: limits.max_traits as u64,
            max_events: limits.max_events as u64,
            max_properties_per_event: limits.max_properties_per_event as u64,
            max_properties: limits.max_properties as u64,
            max_name_bytes: limits.max_name_bytes as u64,
        }),
    })
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        // The data directory is the host's layout: admins only (everyone
        // when no keys are configured). A request that did not pass the
        // auth layer is nobody.
        let admin = request.extensions().get::<Caller>().is_some_and(|c| c.may(Role::Admin));
        let node = self.node.clone();
        let mut reply = tokio::task::spawn_blocking(move || node_status(&node))
            .await
            .map_err(|e| status(ServerError::Internal(format!("the status task failed: {e}"))))?;
        if !admin {
            reply.data_dir.clear();
            for n in &mut reply.nodes {
                n.raft_addr.clear();
            }
        }
        Ok(Response::new(reply))
    }

    async fn get_schema(
        &self,
        request: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::SchemaReply>, Status> {
        Ok(Response::new(schema_reply(&self.node, request.get_ref())?))
    }

    async fn apply_schema(
        &self,
        request: Request<pb::ApplySchemaRequest>,
    ) -> Result<Response<pb::SchemaReply>, Status> {
        self.node.apply_schema(request.into_inner().json).await.map_err(status)?;
        Ok(Response::new(schema_reply(&self.node, &pb::GetSchemaRequest::default())?))
    }

    async fn list_rejected(
        &self,
        request: Request<pb::ListRejectedRequest>,
    ) -> Result<Response<pb::ListRejectedReply>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let state = self.node.catalog.state.read();
        let skip = state.rejections.len().saturating_sub(limit);
        Ok(Response::new(pb::ListRejectedReply {
            rejections: state.rejections.iter().skip(skip).map(|r| rejection(r, 0)).collect(),
            total: state.totals.rejections,
        }))
    }

    async fn list_merges(
        &self,
        request: Request<pb::ListMergesRequest>,
    ) -> Result<Response<pb::ListMergesReply>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let state = self.node.catalog.state.read();
        let skip = state.merges.len().saturating_sub(limit);
        Ok(Response::new(pb::ListMergesReply {
            merges: state
                .merges
                .iter()
                .skip(skip)
                .map(|m| pb::MergeRecord {
                    into_profile: m.into,
                    from_profile: m.from,
                    message_id: m.message_id.clone().unwrap_or_default(),
                    linked_by: m.linked_by.clone(),
                    at: format_rfc3339_ms(m.at_ms),
                    from_shard: m.from_shard as u64,
                    into_shard: m.into_shard as u64,
                })
                .collect(),
            total: state.totals.merges,
        }))
    }

    async fn set_member(
        &self,
        request: Request<pb::SetMemberRequest>,
    ) -> Result<Response<pb::SetMemberReply>, Status> {
        let r = request.into_inner();
        let member = Member {
            id: r.node_id,
            raft_addr: r.raft_addr,
            grpc_addr: r.grpc_addr,
            state: if r.remove { MemberState::Removed } else { MemberState::Active },
        };
        if !self.node.is_clustered() {
            return Err(status(ServerError::BadRequest(
                "this node runs alone (no --peer, no --join): it has no member table to change".into(),
            )));
        }
        self.node.set_member(member).await.map_err(|e| status(ServerError::from(e)))?;
        Ok(Response::new(pb::SetMemberReply {
            members: self.node.members().iter().map(member_node).collect(),
        }))
    }

    async fn move_replica(
        &self,
        request: Request<pb::MoveReplicaRequest>,
    ) -> Result<Response<pb::PlacementReply>, Status> {
        let r = request.into_inner();
        self.refuse_alone()?;
        self.node
            .move_replica(r.group_id, r.from_node, r.to_node)
            .await
            .map_err(|e| status(ServerError::from(e)))?;
        let moved = ReplicaMove { group: r.group_id, from: r.from_node, to: r.to_node };
        Ok(Response::new(placement_reply(&self.node.placement(), &[moved])))
    }

    async fn rebalance(
        &self,
        _request: Request<pb::RebalanceRequest>,
    ) -> Result<Response<pb::PlacementReply>, Status> {
        self.refuse_alone()?;
        let before = self.node.placement();
        self.node.rebalance().await.map_err(|e| status(ServerError::from(e)))?;
        let after = self.node.placement();
        Ok(Response::new(placement_reply(&after, &before.moves_to(&after))))
    }
}

impl Services {
    /// Refuses a cluster operation on a node that runs alone.
    fn refuse_alone(&self) -> Result<(), Status> {
        if self.node.is_clustered() {
            return Ok(());
        }
        Err(status(ServerError::BadRequest(
            "this node runs alone (no --peer, no --join): it has no placement to change".into(),
        )))
    }
}

fn placement_reply(placement: &Placement, moves: &[ReplicaMove]) -> pb::PlacementReply {
    pb::PlacementReply {
        moves: moves
            .iter()
            .map(|m| pb::ReplicaMove { group_id: m.group, from_node: m.from, to_node: m.to })
            .collect(),
        groups: placement
            .groups
            .iter()
            .map(|(&group_id, voters)| pb::GroupPlacement { group_id, voters: voters.clone() })
            .collect(),
    }
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// The member table, and the founding nodes it does not list yet.
fn cluster_nodes(node: &Node) -> Vec<pb::ClusterNode> {
    let members = node.members();
    let zones = node.placement().zones;
    let mut nodes: Vec<pb::ClusterNode> = members
        .iter()
        .map(|m| pb::ClusterNode { zone: zones.get(&m.id).cloned().unwrap_or_default(), ..member_node(m) })
        .collect();
    for p in node.config.peers.iter().filter(|p| !members.iter().any(|m| m.id == p.id)) {
        nodes.push(pb::ClusterNode {
            node_id: p.id,
            grpc_addr: p.grpc_addr.clone(),
            raft_addr: p.raft_addr.clone(),
            state: String::new(),
            zone: String::new(),
        });
    }
    nodes.sort_by_key(|n| n.node_id);
    nodes
}

fn member_node(m: &Member) -> pb::ClusterNode {
    pb::ClusterNode {
        node_id: m.id,
        grpc_addr: m.grpc_addr.clone(),
        raft_addr: m.raft_addr.clone(),
        state: m.state.name().to_string(),
        zone: String::new(),
    }
}

fn node_status(node: &Node) -> pb::StatusReply {
    let groups = node.driver.status();
    let traffic = node.transport.traffic();
    let placement = node.placement();
    let mut reply = pb::StatusReply {
        node_id: node.config.node_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: node.config.data_dir.display().to_string(),
        uptime_ms: node.started.elapsed().as_millis() as u64,
        nodes: cluster_nodes(node),
        raft_messages_sent: traffic.messages,
        raft_bytes_sent: traffic.bytes,
        raft_messages_dropped: traffic.dropped,
        snapshot_bytes_sent: traffic.snapshot_bytes,
        replication_factor: if node.is_clustered() { placement.factor() as u32 } else { 0 },
        ..Default::default()
    };
    {
        let state = node.catalog.state.read();
        reply.messages_applied = state.totals.applied;
        reply.messages_rejected = state.totals.rejections;
        reply.duplicates = state.totals.duplicates;
        reply.merges = state.totals.merges;
        reply.memory_bytes += state.heap_bytes() as u64;
    }
    for g in groups {
        let mut out = pb::GroupStatus {
            group_id: g.id,
            name: g.name.clone(),
            term: g.term,
            commit_index: g.commit,
            applied_index: g.applied,
            leader_id: g.leader,
            role: g.role.to_string(),
            snapshot_index: g.snapshot_index,
            voters: sorted(&g.voters),
            learners: sorted(&g.learners),
            placed: placement.wanted(g.id).map(sorted).unwrap_or_default(),
            ..Default::default()
        };
        let held = g.voters.contains(&node.config.node_id) || g.learners.contains(&node.config.node_id);
        if let Some(shard) = g.id.checked_sub(2).and_then(|s| node.shards.get(s as usize)) {
            let state = shard.read_state();
            let (traits, events) = state.shard.heap_bytes();
            out.rows = state.shard.len();
            out.memory_bytes = (traits + events) as u64;
            // What this node holds: a replica the placement moved away is
            // not counted (its data is not reclaimed yet: it stays in
            // memory and on disk, and counts in `memory_bytes`).
            if held || !node.is_clustered() {
                reply.profiles += out.rows;
                reply.events += state.shard.events.values().map(|t| t.total).sum::<u64>();
            }
            reply.memory_bytes += out.memory_bytes;
        } else {
            out.rows = node.catalog.state.read().directory.profiles();
        }
        reply.groups.push(out);
    }
    reply
}

/// The router [`router`] builds: the services behind the auth layer.
pub type GrpcRouter =
    tonic::transport::server::Router<tower::layer::util::Stack<GrpcAuthLayer, tower::layer::util::Identity>>;

/// Builds the tonic router with every service, health and reflection,
/// behind the API key check of `keys` (none: open) and served over TLS
/// when `tls` is given.
pub fn router(node: Arc<Node>, keys: ApiKeys, tls: Option<&TlsIdentity>) -> Result<GrpcRouter, String> {
    use pb::admin_server::AdminServer;
    use pb::ingest_server::IngestServer;
    use pb::query_server::QueryServer;
    use pb::segments_server::SegmentsServer;
    let services = Services::new(node);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    // Health is served from the moment the router exists: the node is open.
    tokio::spawn(async move {
        reporter.set_serving::<IngestServer<Services>>().await;
        reporter.set_serving::<QueryServer<Services>>().await;
        reporter.set_serving::<SegmentsServer<Services>>().await;
        reporter.set_serving::<AdminServer<Services>>().await;
    });
    let mut builder = tonic::transport::Server::builder()
        .initial_connection_window_size(super::ingest_stream::CONNECTION_WINDOW_BYTES);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.grpc()).map_err(|e| format!("gRPC TLS: {e}"))?;
    }
    Ok(builder
        .layer(GrpcAuthLayer::new(keys))
        .add_service(health)
        .add_service(reflection)
        .add_service(
            IngestServer::new(services.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(QueryServer::new(services.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(SegmentsServer::new(services.clone()))
        .add_service(AdminServer::new(services)))
}
