//! `IngestStream`: a stream of batches, applied in order, answered once.
//!
//! # Why the stream is read ahead
//!
//! h2 (under tonic) keeps a per-connection budget for the framing overhead
//! of small DATA frames that it holds unread: each frame under 256 bytes
//! costs the difference, and the budget is half the connection's flow
//! control window. A client that sends one small batch per frame while the
//! server awaits the ingest of the previous one fills that budget within a
//! few thousand frames, and h2 then ends the whole connection (GOAWAY
//! `ENHANCE_YOUR_CALM`, "too_many_data_frames"): part of the stream applied,
//! no reply. So a task reads the stream as fast as it arrives, holding at
//! most [`READ_AHEAD_BYTES`] of decoded batches, and the handler hands
//! whatever has gathered to the node as one call (up to
//! [`JOIN_MESSAGES`] messages): small batches ride along together, at
//! the node's speed for large batches. The gRPC server's connection window
//! ([`CONNECTION_WINDOW_BYTES`]) also makes the budget large enough that a
//! stream whose frames are at least 32 bytes (any batch of one real
//! message) cannot use it up even while the reader waits.
//!
//! # A stream that breaks
//!
//! A stream can break part way (a frame that does not decode, a client that
//! resets it). What came before the break is applied, and the error says so:
//! the position of the break, and how many messages before it were applied,
//! duplicates and rejected. A failed ingest call says the same for the
//! messages before the batch that failed.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::grpc::{reply, MAX_MESSAGE_BYTES};
use super::status::status;
use crate::ingest::pipeline::MAX_ENTRY_MESSAGES;
use crate::ingest::Source;
use crate::node::{now_ms, Node};
use crate::proto::v1 as pb;

/// Bytes of decoded batches read ahead of the ingest (and being ingested),
/// at most: one batch of the largest size the server accepts.
pub const READ_AHEAD_BYTES: usize = MAX_MESSAGE_BYTES;

/// Messages handed to the node in one call, at most, when several batches
/// wait: one catalog entry's worth.
pub const JOIN_MESSAGES: usize = MAX_ENTRY_MESSAGES;

/// The gRPC server's initial HTTP/2 connection window, bytes. h2 allows
/// half of it as the budget for small DATA frames held unread (see the
/// module documentation); 16 MiB gives 8 MiB of budget against at most 1
/// MiB of one stream's unread data (hyper's stream window).
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// Bytes a message is counted for beyond its text, and a batch beyond its
/// messages (so that empty batches are bounded too).
const OVERHEAD_BYTES: usize = 32;

/// What the reader hands the handler.
enum Read {
    /// A batch's messages, and the read-ahead bytes they hold.
    Batch(Vec<String>, OwnedSemaphorePermit),
    /// The stream broke with this status; nothing follows.
    Broken(Status),
}

/// The read-ahead bytes a batch holds.
fn weight(messages: &[String]) -> u32 {
    let bytes = messages.iter().map(|m| m.len() + OVERHEAD_BYTES).sum::<usize>() + OVERHEAD_BYTES;
    // A batch larger than the read-ahead (possible only up to the message
    // limit plus overheads) holds all of it.
    bytes.min(READ_AHEAD_BYTES) as u32
}

/// Aborts the reader when the handler ends early (a failed ingest, or the
/// call dropped), which drops the stream and resets it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `stream` into `out` as fast as it comes, within `budget` bytes.
async fn read_ahead<S>(mut stream: S, budget: Arc<Semaphore>, out: mpsc::UnboundedSender<Read>)
where
    S: Stream<Item = Result<pb::IngestBatchRequest, Status>> + Unpin,
{
    while let Some(item) = stream.next().await {
        match item {
            Ok(batch) => {
                let Ok(permit) = budget.clone().acquire_many_owned(weight(&batch.messages)).await else {
                    return;
                };
                if out.send(Read::Batch(batch.messages, permit)).is_err() {
                    return;
                }
            }
            Err(status) => {
                let _ = out.send(Read::Broken(status));
                return;
            }
        }
    }
}

/// The stream's reply so far.
#[derive(Default)]
struct Progress {
    reply: pb::IngestReply,
    /// Messages handled: the position of the next one.
    offset: u64,
}

impl Progress {
    /// What was done with the messages before the current position.
    fn so_far(&self) -> String {
        format!(
            "the {} messages before position {} were taken: {} applied, {} duplicates, {} rejections",
            self.offset,
            self.offset,
            self.reply.applied,
            self.reply.duplicates,
            self.reply.rejections.len()
        )
    }
}

/// Ingests every batch of `stream` in order through `node` and returns one
/// reply for them all, positions counted across the stream.
pub async fn ingest_stream<S>(node: Arc<Node>, stream: S, source: Source) -> Result<pb::IngestReply, Status>
where
    S: Stream<Item = Result<pb::IngestBatchRequest, Status>> + Send + Unpin + 'static,
{
    let budget = Arc::new(Semaphore::new(READ_AHEAD_BYTES));
    // Unbounded as a channel, bounded by `budget` in bytes (and so in
    // batches, since each batch weighs at least OVERHEAD_BYTES).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _reader = AbortOnDrop(tokio::spawn(read_ahead(stream, budget, tx)));
    let mut progress = Progress::default();
    let mut carried: Option<Read> = None;
    loop {
        let next = match carried.take() {
            Some(read) => read,
            None => match rx.recv().await {
                Some(read) => read,
                None => break,
            },
        };
        let (mut messages, permit) = match next {
            Read::Batch(messages, permit) => (messages, permit),
            Read::Broken(status) => {
                let message = format!("the stream broke: {}; {}", status.message(), progress.so_far());
                tracing::warn!(reason = %message, "an IngestStream ended early");
                return Err(Status::new(status.code(), message));
            }
        };
        // Join the batches that are already waiting, up to one entry's
        // worth; a break is handled after them.
        let mut held = vec![permit];
        while messages.len() < JOIN_MESSAGES {
            match rx.try_recv() {
                Ok(Read::Batch(more, permit)) if messages.len() + more.len() <= JOIN_MESSAGES => {
                    messages.extend(more);
                    held.push(permit);
                }
                Ok(other) => {
                    carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let n = messages.len() as u64;
        let report = node.ingest_text(messages, now_ms(), source).await.map_err(|e| {
            let s = status(e);
            Status::new(s.code(), format!("{} ({})", s.message(), progress.so_far()))
        })?;
        drop(held);
        let part = reply(&report, progress.offset);
        progress.reply.applied += part.applied;
        progress.reply.duplicates += part.duplicates;
        progress.reply.rejections.extend(part.rejections);
        progress.offset += n;
    }
    Ok(progress.reply)
}
