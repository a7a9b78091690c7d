//! Client writes forwarded to the catalog's leader
//! (`cohort.internal.v1.Forward`, `proto/cohort/internal/v1/raft.proto`).
//!
//! Only the catalog's leader sequences ingest and proposes changes to the
//! schema and the saved segments, but a client may write to any node: a
//! node that does not lead hands each batch its doors took to the node
//! that does, with the door's receive time and source, and answers the
//! client with the leader's report (or the leader's status); a schema or
//! segment change goes the same way. Nothing forwarded is forwarded again:
//! a node that is asked to sequence a write and does not lead answers
//! UNAVAILABLE, and the node that forwarded it says so to its client, who
//! retries.
//!
//! The service is served beside the Raft service, on `raft_addr`, under the
//! same mutual TLS: only peers reach it, and a peer is trusted with what its
//! door authenticated.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::catalog::{CatalogCommand, CatalogError};
use crate::cluster::membership::{Member, MemberState};
use crate::ingest::{BoxFuture, IngestError, IngestReport, RejectionRecord, Source};
use crate::proto::internal as pb;
use crate::replication::transport::{PeerTls, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use crate::replication::ReplicationError;

/// Longest a forwarded batch may take at the leader: its proposals time
/// out before (10 s), so past this the leader is gone (a leader that stops
/// answering altogether is found sooner, by the connection's keepalive).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(12);

/// Most bytes of a forwarded batch, either way (a batch of the largest
/// door, the HTTP one, is 500 KiB; gRPC batches are bounded by gRPC's own
/// 4 MiB on the public door).
pub const MAX_FORWARD_BYTES: usize = 16 << 20;

/// The trailer of a Forward.Ingest failure that refused the batch before
/// anything was appended (see [`IngestError::nothing_appended`]).
const NOTHING_APPENDED: &str = "x-cohort-nothing-appended";

/// What sequences writes on the node that leads the catalog.
pub trait LocalWrites: Send + Sync + 'static {
    /// Ingests `messages` here, never forwarding them.
    fn ingest_here(
        &self,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> BoxFuture<'_, Result<IngestReport, IngestError>>;

    /// Proposes a schema or segment change here, never forwarding it;
    /// returns the catalog's applied index once the change is applied.
    fn admin_here(&self, command: CatalogCommand) -> BoxFuture<'_, Result<u64, CatalogError>>;

    /// Proposes a pipeline step to shard group `group` here, or with
    /// `relay` to the group's leader when that is another node; returns
    /// (skipped, gap) as its applier answered.
    fn propose_here(
        &self,
        group: u64,
        data: Vec<u8>,
        relay: bool,
    ) -> BoxFuture<'_, Result<(bool, bool), ReplicationError>>;

    /// Answers a read of shards held here for another node
    /// (`Forward.Read`): the request's bytes, this node's replicas of
    /// those shards held to its staleness bound; the reply's bytes, or
    /// the status to answer.
    fn read_here(
        &self,
        request: Vec<u8>,
        deadline: Option<std::time::Instant>,
    ) -> BoxFuture<'_, Result<Vec<u8>, tonic::Status>>;

    /// Records `member`, a node with `shards` shards that asks to join,
    /// in the member table (through the catalog's leader, wherever it is)
    /// and returns the table once this node's catalog has the change.
    fn join(&self, member: Member, shards: u32) -> BoxFuture<'_, Result<Vec<Member>, CatalogError>>;
}

/// Where forwarded writes go on this node, once it is open.
pub type WritesSlot = Arc<OnceLock<Weak<dyn LocalWrites>>>;

impl crate::ingest::pipeline::ShardPeers for Forwarder {
    fn propose(
        &self,
        node: u64,
        group: u64,
        data: Vec<u8>,
        relay: bool,
    ) -> BoxFuture<'_, Result<(bool, bool), ReplicationError>> {
        Box::pin(Forwarder::propose(self, node, group, data, relay))
    }

    fn export(
        &self,
        node: u64,
        shard: u32,
        profile: crate::shard::ProfileId,
    ) -> BoxFuture<'_, Result<Option<crate::shard::ProfileImage>, String>> {
        use crate::query::remote::{ReadReply, ReadRequest, ShardAnswer, ShardQuery};
        Box::pin(async move {
            let request = ReadRequest {
                shards: vec![shard],
                ..ReadRequest::compiled(ShardQuery::Export { profile }, &[], 0)
            };
            let bytes = self.read(node, request.encode(), None).await?;
            let reply = ReadReply::decode(&bytes)?;
            match reply.answers.into_iter().next() {
                Some((_, ShardAnswer::Image(image))) => Ok(image.map(|b| *b)),
                other => Err(format!("answered {other:?}")),
            }
        })
    }
}

/// Sends batches to other nodes' Forward service, over one lazily
/// connected channel per node (mutual TLS when configured).
pub struct Forwarder {
    node_id: u64,
    raft_addrs: parking_lot::RwLock<HashMap<u64, String>>,
    tls: Option<PeerTls>,
    channels: Mutex<HashMap<u64, Channel>>,
}

impl Forwarder {
    /// A forwarder from node `node_id` to the nodes of `raft_addrs` (Raft
    /// id → their `raft_addr`).
    pub fn new(node_id: u64, raft_addrs: HashMap<u64, String>, tls: Option<PeerTls>) -> Forwarder {
        Forwarder {
            node_id,
            raft_addrs: parking_lot::RwLock::new(raft_addrs),
            tls,
            channels: Mutex::default(),
        }
    }

    /// Node `node`'s Raft service is at `raft_addr` from now on (a node
    /// that joined or moved).
    pub fn set_addr(&self, node: u64, raft_addr: &str) {
        if node == self.node_id || self.raft_addrs.read().get(&node).is_some_and(|a| a == raft_addr) {
            return;
        }
        self.raft_addrs.write().insert(node, raft_addr.to_string());
        self.channels.lock().remove(&node);
    }

    fn channel(&self, leader: u64) -> Result<Channel, IngestError> {
        if let Some(channel) = self.channels.lock().get(&leader) {
            return Ok(channel.clone());
        }
        let unreachable = |reason: String| IngestError::ForwardFailed { leader, reason };
        let addr = self
            .raft_addrs
            .read()
            .get(&leader)
            .cloned()
            .ok_or_else(|| unreachable("no Raft address is configured for it".into()))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| unreachable(format!("{addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint =
                endpoint.tls_config(tls.client()).map_err(|e| unreachable(format!("{addr}: TLS: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        self.channels.lock().insert(leader, channel.clone());
        Ok(channel)
    }

    /// Hands `messages` to node `leader` and returns its report; a failed
    /// call (the leader's status, or the connection's) comes back as
    /// [`IngestError::Forwarded`] with its code.
    pub async fn ingest(
        &self,
        leader: u64,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> Result<IngestReport, IngestError> {
        let mut client = pb::forward_client::ForwardClient::new(self.channel(leader)?)
            .max_decoding_message_size(MAX_FORWARD_BYTES)
            .max_encoding_message_size(MAX_FORWARD_BYTES);
        let mut request = tonic::Request::new(pb::ForwardedIngest {
            from_node: self.node_id,
            messages,
            received_ms,
            source: source.name().into(),
        });
        request.set_timeout(FORWARD_TIMEOUT);
        // The leader's own status, or the client's when it cannot be
        // reached or does not answer in time.
        let reply = client.ingest(request).await.map_err(|status| {
            let nothing_appended = status.metadata().get(NOTHING_APPENDED).is_some();
            let (code, message) = retryable(&status);
            IngestError::Forwarded { leader, code, message, nothing_appended }
        })?;
        from_proto(reply.into_inner()).map_err(|reason| IngestError::ForwardFailed { leader, reason })
    }

    /// Proposes a pipeline step to shard group `group` at node `leader`,
    /// which leads it (or, with `relay`, hands it on to the node that
    /// does); returns (skipped, gap) as its applier answered.
    pub async fn propose(
        &self,
        leader: u64,
        group: u64,
        data: Vec<u8>,
        relay: bool,
    ) -> Result<(bool, bool), ReplicationError> {
        let remote = |code: tonic::Code, message: String| ReplicationError::Remote {
            group,
            leader,
            code: code as i32,
            message,
        };
        let channel = self.channel(leader).map_err(|e| remote(tonic::Code::Unavailable, e.to_string()))?;
        let mut client = pb::forward_client::ForwardClient::new(channel)
            .max_decoding_message_size(MAX_FORWARD_BYTES)
            .max_encoding_message_size(MAX_FORWARD_BYTES);
        let mut request =
            tonic::Request::new(pb::ForwardedProposal { from_node: self.node_id, group, data, relay });
        request.set_timeout(FORWARD_TIMEOUT);
        let reply = client.propose(request).await.map_err(|s| remote(s.code(), s.message().to_string()))?;
        let reply = reply.into_inner();
        Ok((reply.skipped, reply.gap))
    }

    /// Asks node `node` to read shards it holds (`request`, a
    /// [`ReadRequest`](crate::query::remote::ReadRequest)'s bytes) and
    /// returns its reply's bytes, or what went wrong (with the node's
    /// status when it answered). The call ends at `deadline`.
    pub async fn read(
        &self,
        node: u64,
        request: Vec<u8>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<u8>, String> {
        let channel = self.channel(node).map_err(|e| e.to_string())?;
        let mut client = pb::forward_client::ForwardClient::new(channel)
            .max_decoding_message_size(MAX_FORWARD_BYTES)
            .max_encoding_message_size(MAX_FORWARD_BYTES);
        let mut call = tonic::Request::new(pb::ShardRead { from_node: self.node_id, request });
        let timeout = deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or(FORWARD_TIMEOUT)
            .min(FORWARD_TIMEOUT);
        if timeout.is_zero() {
            return Err("the deadline passed before the call".into());
        }
        call.set_timeout(timeout);
        let reply = client.read(call).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(reply.into_inner().reply)
    }

    /// Hands a schema or segment change to node `leader` and returns the
    /// leader's catalog applied index once the change was applied; a
    /// failed call comes back as [`CatalogError::Forwarded`] with its code.
    pub async fn admin(&self, leader: u64, command: CatalogCommand) -> Result<u64, CatalogError> {
        use pb::forwarded_admin::Change;
        let change = match command {
            CatalogCommand::ApplySchema(json) => Change::ApplySchema(json),
            CatalogCommand::CreateSegment { name, expression, description, now_ms } => {
                Change::CreateSegment(pb::ForwardedSegment { name, expression, description, now_ms })
            }
            CatalogCommand::DeleteSegment(name) => Change::DeleteSegment(name),
            CatalogCommand::SetMember(member) => Change::SetMember(member_to_proto(&member)),
            CatalogCommand::MoveReplica(m) => {
                Change::MoveReplica(pb::ForwardedMove { group: m.group, from_node: m.from, to_node: m.to })
            }
            CatalogCommand::Rebalance => Change::Rebalance(true),
            CatalogCommand::SetZone { node, zone } => Change::SetZone(pb::ForwardedZone { node, zone }),
            other => {
                return Err(CatalogError::Forwarded {
                    leader,
                    code: tonic::Code::Internal as i32,
                    message: format!("{other:?} is not a change a node forwards"),
                })
            }
        };
        let channel = self.channel(leader).map_err(|e| CatalogError::Forwarded {
            leader,
            code: tonic::Code::Unavailable as i32,
            message: e.to_string(),
        })?;
        let mut client = pb::forward_client::ForwardClient::new(channel)
            .max_decoding_message_size(MAX_FORWARD_BYTES)
            .max_encoding_message_size(MAX_FORWARD_BYTES);
        let mut request =
            tonic::Request::new(pb::ForwardedAdmin { from_node: self.node_id, change: Some(change) });
        request.set_timeout(FORWARD_TIMEOUT);
        let reply = client.admin(request).await.map_err(|status| {
            let (code, message) = retryable(&status);
            CatalogError::Forwarded { leader, code, message }
        })?;
        Ok(reply.into_inner().catalog_applied)
    }
}

/// The code and message a forwarded call's failure is answered with. A
/// leader answers with the codes of the one mapping, never UNKNOWN or
/// CANCELLED: those are this side's, a connection that broke with the
/// call in flight (the leader died). That is UNAVAILABLE to the client,
/// which may resend (the batch may have been applied; resending it is
/// deduplicated by `messageId`).
fn retryable(status: &tonic::Status) -> (i32, String) {
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled => (
            tonic::Code::Unavailable as i32,
            format!(
                "the connection to it broke with the call in flight ({}); the batch may or may not have been applied, and resending it is deduplicated by messageId",
                status.message()
            ),
        ),
        code => (code as i32, status.message().to_string()),
    }
}

/// The receiving end: sequences what other nodes forward.
pub struct ForwardService {
    target: WritesSlot,
}

impl ForwardService {
    /// The service, handing batches to what `target` holds once the node
    /// is open (UNAVAILABLE before).
    pub fn new(target: WritesSlot) -> ForwardService {
        ForwardService { target }
    }

    fn target(&self) -> Result<Arc<dyn LocalWrites>, tonic::Status> {
        self.target
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| tonic::Status::unavailable("this node is still opening (or closing)"))
    }

    /// The tonic server of this service, with its message bound.
    pub fn server(self) -> pb::forward_server::ForwardServer<ForwardService> {
        pb::forward_server::ForwardServer::new(self)
            .max_decoding_message_size(MAX_FORWARD_BYTES)
            .max_encoding_message_size(MAX_FORWARD_BYTES)
    }
}

#[tonic::async_trait]
impl pb::forward_server::Forward for ForwardService {
    async fn ingest(
        &self,
        request: tonic::Request<pb::ForwardedIngest>,
    ) -> Result<tonic::Response<pb::ForwardedReport>, tonic::Status> {
        let batch = request.into_inner();
        let source = source_named(&batch.source).ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "a batch forwarded by node {} names no door ({:?})",
                batch.from_node, batch.source
            ))
        })?;
        let report =
            self.target()?.ingest_here(batch.messages, batch.received_ms, source).await.map_err(|e| {
                let refused = e.nothing_appended();
                let mut status = crate::server::status::status(e);
                if refused {
                    status
                        .metadata_mut()
                        .insert(NOTHING_APPENDED, tonic::metadata::MetadataValue::from_static("1"));
                }
                status
            })?;
        Ok(tonic::Response::new(to_proto(report)))
    }

    async fn admin(
        &self,
        request: tonic::Request<pb::ForwardedAdmin>,
    ) -> Result<tonic::Response<pb::ForwardedAdminReply>, tonic::Status> {
        use pb::forwarded_admin::Change;
        let request = request.into_inner();
        let command = match request.change {
            Some(Change::ApplySchema(json)) => CatalogCommand::ApplySchema(json),
            Some(Change::CreateSegment(s)) => CatalogCommand::CreateSegment {
                name: s.name,
                expression: s.expression,
                description: s.description,
                now_ms: s.now_ms,
            },
            Some(Change::DeleteSegment(name)) => CatalogCommand::DeleteSegment(name),
            Some(Change::MoveReplica(m)) => {
                CatalogCommand::MoveReplica(crate::cluster::placement::ReplicaMove {
                    group: m.group,
                    from: m.from_node,
                    to: m.to_node,
                })
            }
            Some(Change::Rebalance(_)) => CatalogCommand::Rebalance,
            Some(Change::SetZone(z)) => CatalogCommand::SetZone { node: z.node, zone: z.zone },
            Some(Change::SetMember(m)) => CatalogCommand::SetMember(member_from_proto(m).map_err(|why| {
                tonic::Status::invalid_argument(format!(
                    "a member forwarded by node {}: {why}",
                    request.from_node
                ))
            })?),
            None => {
                return Err(tonic::Status::invalid_argument(format!(
                    "a change forwarded by node {} holds no change",
                    request.from_node
                )))
            }
        };
        let catalog_applied =
            self.target()?.admin_here(command).await.map_err(crate::server::status::status)?;
        Ok(tonic::Response::new(pb::ForwardedAdminReply { catalog_applied }))
    }

    async fn propose(
        &self,
        request: tonic::Request<pb::ForwardedProposal>,
    ) -> Result<tonic::Response<pb::ForwardedProposalReply>, tonic::Status> {
        let p = request.into_inner();
        if p.group == crate::cluster::placement::CATALOG_GROUP {
            return Err(tonic::Status::invalid_argument(format!(
                "node {} sent a catalog entry as a pipeline step: only shard groups take them",
                p.from_node
            )));
        }
        let (skipped, gap) = self
            .target()?
            .propose_here(p.group, p.data, p.relay)
            .await
            .map_err(crate::server::status::status)?;
        Ok(tonic::Response::new(pb::ForwardedProposalReply { skipped, gap }))
    }

    async fn read(
        &self,
        request: tonic::Request<pb::ShardRead>,
    ) -> Result<tonic::Response<pb::ShardReadReply>, tonic::Status> {
        let deadline = crate::server::grpc::deadline(&request)?;
        let read = request.into_inner();
        let reply = self.target()?.read_here(read.request, deadline).await?;
        Ok(tonic::Response::new(pb::ShardReadReply { reply }))
    }

    async fn join(
        &self,
        request: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinReply>, tonic::Status> {
        let request = request.into_inner();
        let member = request
            .member
            .ok_or_else(|| tonic::Status::invalid_argument("a join request names no node"))
            .and_then(|m| member_from_proto(m).map_err(tonic::Status::invalid_argument))?;
        if member.state != MemberState::Active {
            return Err(tonic::Status::invalid_argument(format!(
                "node {} asks to join as {:?}; a joining node is active",
                member.id,
                member.state.name()
            )));
        }
        let members =
            self.target()?.join(member, request.shards).await.map_err(crate::server::status::status)?;
        Ok(tonic::Response::new(pb::JoinReply { members: members.iter().map(member_to_proto).collect() }))
    }
}

/// Asks the node whose Raft service is at `addr` to add `member` (this
/// node, with `shards` shards) to the cluster, and returns the member
/// table (`Err`: what went wrong, with the answering node's words).
pub async fn ask_to_join(
    addr: &str,
    tls: Option<&PeerTls>,
    member: &Member,
    shards: u32,
) -> Result<Vec<Member>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client()).map_err(|e| format!("{addr}: TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let mut client = pb::forward_client::ForwardClient::new(channel);
    let mut request = tonic::Request::new(pb::JoinRequest { member: Some(member_to_proto(member)), shards });
    request.set_timeout(FORWARD_TIMEOUT);
    let reply =
        client.join(request).await.map_err(|s| format!("{addr} answered {:?}: {}", s.code(), s.message()))?;
    reply.into_inner().members.into_iter().map(member_from_proto).collect()
}

fn member_to_proto(m: &Member) -> pb::ForwardedMember {
    pb::ForwardedMember {
        id: m.id,
        raft_addr: m.raft_addr.clone(),
        grpc_addr: m.grpc_addr.clone(),
        state: m.state.name().into(),
    }
}

fn member_from_proto(m: pb::ForwardedMember) -> Result<Member, String> {
    let state = match m.state.as_str() {
        "active" => MemberState::Active,
        "removed" => MemberState::Removed,
        other => return Err(format!("node {} has the state {other:?}: write active or removed", m.id)),
    };
    Ok(Member { id: m.id, raft_addr: m.raft_addr, grpc_addr: m.grpc_addr, state })
}

fn source_named(name: &str) -> Option<Source> {
    [Source::Grpc, Source::Http, Source::Load].into_iter().find(|s| s.name() == name)
}

fn to_proto(report: IngestReport) -> pb::ForwardedReport {
    pb::ForwardedReport {
        applied: report.applied,
        duplicates: report.duplicates,
        rejections: report
            .rejections
            .into_iter()
            .map(|r| pb::ForwardedRejection {
                position: r.position,
                field: r.field,
                reason: r.reason,
                message_id: r.message_id,
                received_ms: r.received_ms,
                source: r.source.name().into(),
            })
            .collect(),
    }
}

fn from_proto(report: pb::ForwardedReport) -> Result<IngestReport, String> {
    let rejections = report
        .rejections
        .into_iter()
        .map(|r| {
            let source = source_named(&r.source)
                .ok_or_else(|| format!("the leader's report names no door ({:?})", r.source))?;
            Ok(RejectionRecord {
                position: r.position,
                field: r.field,
                reason: r.reason,
                message_id: r.message_id,
                received_ms: r.received_ms,
                source,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(IngestReport { applied: report.applied, duplicates: report.duplicates, rejections })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_unavailable_and_a_leaders_code_is_kept() {
        let (code, message) = retryable(&tonic::Status::unknown("transport error"));
        assert_eq!(code, tonic::Code::Unavailable as i32);
        assert!(message.contains("transport error") && message.contains("deduplicated"), "{message}");
        let (code, _) = retryable(&tonic::Status::cancelled("operation was canceled"));
        assert_eq!(code, tonic::Code::Unavailable as i32);
        let (code, message) = retryable(&tonic::Status::resource_exhausted("disk full"));
        assert_eq!((code, message.as_str()), (tonic::Code::ResourceExhausted as i32, "disk full"));
    }

    #[test]
    fn a_report_survives_the_trip_and_every_door_has_a_name() {
        let report = IngestReport {
            applied: 3,
            duplicates: 1,
            rejections: vec![RejectionRecord {
                position: 2,
                field: "traits.age".into(),
                reason: "not a number".into(),
                message_id: Some("m2".into()),
                received_ms: 17,
                source: Source::Http,
            }],
        };
        assert_eq!(from_proto(to_proto(report.clone())).unwrap(), report);
        for source in [Source::Grpc, Source::Http, Source::Load] {
            assert_eq!(source_named(source.name()), Some(source));
        }
        let mut bad = to_proto(report);
        bad.rejections[0].source = "smtp".into();
        assert!(from_proto(bad).unwrap_err().contains("smtp"));
    }
}
