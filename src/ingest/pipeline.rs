//! The ingest pipeline: from a door's batch to durable shard state.
//!
//! Two tasks. The *sequencer* gathers waiting batches into one catalog
//! entry (up to [`MAX_ENTRY_MESSAGES`] messages) and proposes it; applying
//! it resolves identities and yields the entry's shard steps in the
//! catalog's outbox. The *stepper* drives the outbox in log order: each step
//! is proposed to its shard groups in parallel, the next step only once the
//! previous one is committed (a cross-shard merge reads the absorbed
//! profile after every earlier write to it). A batch is acknowledged once
//! every step of its entry is committed, so an acknowledged message is in
//! fsynced logs; several catalog entries are in flight at once, so the
//! fsyncs of catalog and shard groups are shared (group commit).
//!
//! On start the stepper first drives whatever the catalog replay left in
//! the outbox: the steps of entries that a crash interrupted. Shards skip
//! steps at or below their watermark, so nothing is applied twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::{IngestError, IngestReport, Source};
use crate::cluster::catalog::{
    parse_message, CatalogCommand, CatalogMachine, CatalogResult, IngestJob, ParsedIngest, ParsedJob,
    ParsedMessage, Step,
};
use crate::cluster::placement::{shard_group, CATALOG_GROUP};
use crate::replication::driver::{Driver, ProposeError};
use crate::replication::shard_machine::{CommandSource, ProposedCommands, ShardMachine, ShardProposal};
use crate::shard::Command;

/// Messages gathered into one catalog entry at most.
pub const MAX_ENTRY_MESSAGES: usize = 20_000;
/// Catalog entries proposed but not yet fully stepped, at most.
const IN_FLIGHT_ENTRIES: usize = 4;

type Reply = oneshot::Sender<Result<IngestReport, IngestError>>;

struct Job {
    messages: Vec<String>,
    /// The messages parsed by the door's task (see [`ParsedIngest`]).
    parsed: Vec<ParsedMessage>,
    received_ms: i64,
    source: Source,
    reply: Reply,
}

/// Handle to the pipeline.
#[derive(Clone)]
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
}

fn propose_error(e: ProposeError) -> IngestError {
    match e {
        ProposeError::Storage(m) => IngestError::Storage(m),
        other => IngestError::Unavailable(other.to_string()),
    }
}

impl Pipeline {
    /// Starts the pipeline; it first finishes the steps left by a crash.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        driver: Arc<Driver>,
        catalog: Arc<CatalogMachine>,
        shards: Arc<Vec<Arc<ShardMachine>>>,
    ) -> Result<Pipeline, IngestError> {
        let outbox_ready = catalog.outbox_ready.clone();
        let stepper = Stepper { driver: driver.clone(), catalog: catalog.clone(), shards };
        // Recovery: steps the replay regenerated.
        stepper.drain().await?;
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1024);
        let (wait_tx, wait_rx) = mpsc::unbounded_channel::<Vec<(Reply, IngestReport)>>();
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_ENTRIES));
        tokio::spawn(sequence(driver, jobs_rx, wait_tx, slots.clone()));
        tokio::spawn(stepper.run(wait_rx, outbox_ready, slots));
        Ok(Pipeline { jobs: jobs_tx })
    }

    /// Ingests messages (JSON text) and returns once they are durable.
    pub async fn ingest(
        &self,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> Result<IngestReport, IngestError> {
        if messages.is_empty() {
            return Ok(IngestReport::default());
        }
        // Parsing needs no state: it runs here, in parallel across the
        // doors' requests and off the async workers, rather than in the
        // catalog's log order.
        let (messages, parsed) = tokio::task::spawn_blocking(move || {
            let parsed = messages.iter().map(|t| parse_message(t, received_ms)).collect();
            (messages, parsed)
        })
        .await
        .map_err(|e| IngestError::Unavailable(format!("parsing the batch failed: {e}")))?;
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { messages, parsed, received_ms, source, reply })
            .await
            .map_err(|_| IngestError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| IngestError::Unavailable("the node is shutting down".into()))?
    }
}

/// Gathers jobs into catalog entries and proposes them.
async fn sequence(
    driver: Arc<Driver>,
    mut jobs: mpsc::Receiver<Job>,
    waiting: mpsc::UnboundedSender<Vec<(Reply, IngestReport)>>,
    slots: Arc<Semaphore>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].messages.len();
        while count < MAX_ENTRY_MESSAGES {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.messages.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let mut inputs = Vec::with_capacity(batch.len());
        let mut parsed = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for j in batch {
            inputs.push(IngestJob { messages: j.messages, received_ms: j.received_ms, source: j.source });
            parsed.push(ParsedJob { received_ms: j.received_ms, source: j.source, messages: j.parsed });
            replies.push(j.reply);
        }
        let data = CatalogCommand::Ingest(inputs).encode();
        let driver = driver.clone();
        let waiting = waiting.clone();
        // The proposal runs on its own so the next entry can be proposed
        // while this one is being fsynced; the driver keeps log order.
        let proposal = driver.propose_with(CATALOG_GROUP, data, Some(Box::new(ParsedIngest(parsed))));
        tokio::spawn(async move {
            match proposal.await {
                Ok(result) => match result.downcast::<CatalogResult>().map(|r| *r) {
                    Ok(CatalogResult::Ingested(reports)) if reports.len() == replies.len() => {
                        // The stepper replies once the entry's steps are
                        // committed, and releases the slot.
                        permit.forget();
                        let _ = waiting.send(replies.into_iter().zip(reports).collect());
                    }
                    _ => {
                        for r in replies {
                            let _ = r.send(Err(IngestError::Storage("unexpected catalog result".into())));
                        }
                    }
                },
                Err(e) => {
                    let e = propose_error(e);
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

struct Stepper {
    driver: Arc<Driver>,
    catalog: Arc<CatalogMachine>,
    shards: Arc<Vec<Arc<ShardMachine>>>,
}

impl Stepper {
    /// Replies wait here until the outbox has been drained past them.
    async fn run(
        self,
        mut waiting: mpsc::UnboundedReceiver<Vec<(Reply, IngestReport)>>,
        ready: Arc<Notify>,
        slots: Arc<Semaphore>,
    ) {
        let mut pending: Vec<Vec<(Reply, IngestReport)>> = Vec::new();
        loop {
            tokio::select! {
                w = waiting.recv() => match w {
                    Some(replies) => pending.push(replies),
                    None => return,
                },
                _ = ready.notified() => {}
            }
            match self.drain().await {
                Ok(()) => {
                    // A reply reaches us only after its entry was applied
                    // (and its steps queued), so every pending reply's
                    // steps were in the outbox this drain emptied.
                    for replies in pending.drain(..) {
                        for (reply, report) in replies {
                            let _ = reply.send(Ok(report));
                        }
                        slots.add_permits(1);
                    }
                }
                Err(e) => {
                    eprintln!("error: ingest steps failed, retrying: {e}");
                    for replies in pending.drain(..) {
                        for (reply, _) in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                        slots.add_permits(1);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    ready.notify_one();
                }
            }
        }
    }

    /// Drives every outbox entry, oldest first, popping each once done.
    async fn drain(&self) -> Result<(), IngestError> {
        loop {
            // The entry stays in the outbox (and in catalog snapshots) until
            // its steps are committed; a failed step is retried from here.
            let steps = match self.catalog.outbox.lock().front() {
                None => return Ok(()),
                Some(entry) => entry.steps.clone(),
            };
            self.drive(steps).await?;
            self.catalog.outbox.lock().pop_front();
        }
    }

    async fn drive(&self, steps: Arc<Vec<Step>>) -> Result<(), IngestError> {
        for (index, step) in steps.iter().enumerate() {
            match step {
                Step::Writes { tag, by_shard } => {
                    let proposals: Vec<_> = by_shard
                        .iter()
                        .filter(|(s, _)| self.shards[**s as usize].watermark() < *tag)
                        .map(|(s, commands)| {
                            // The applier takes the commands from here
                            // rather than decoding the entry again.
                            let local = ProposedCommands {
                                tag: *tag,
                                source: Box::new(StepCommands {
                                    steps: steps.clone(),
                                    step: index,
                                    shard: *s,
                                }),
                            };
                            self.propose_with(*s, ShardProposal::encode_parts(*tag, commands), local)
                        })
                        .collect();
                    for r in futures_join(proposals).await? {
                        r?;
                    }
                }
                Step::Move { import_tag, remove_tag, from, from_shard, into, into_shard } => {
                    if self.shards[*into_shard as usize].watermark() < *import_tag {
                        let image = self.shards[*from_shard as usize].read_state().shard.read_profile(*from);
                        let commands = match image {
                            Some(mut image) => {
                                image.profile = *into;
                                vec![Command::Import(image)]
                            }
                            // Already gone: nothing to carry (the tag
                            // still advances the watermark).
                            None => vec![],
                        };
                        self.propose(*into_shard, ShardProposal::encode_parts(*import_tag, &commands))
                            .await?;
                    }
                    if self.shards[*from_shard as usize].watermark() < *remove_tag {
                        let remove = [Command::Remove { profile: *from }];
                        self.propose(*from_shard, ShardProposal::encode_parts(*remove_tag, &remove)).await?;
                    }
                }
            }
        }
        Ok(())
    }

    fn propose(
        &self,
        shard: u32,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), IngestError>> + Send + 'static {
        let fut = self.driver.propose(shard_group(shard), data);
        async move { fut.await.map(|_| ()).map_err(propose_error) }
    }

    fn propose_with(
        &self,
        shard: u32,
        data: Vec<u8>,
        local: ProposedCommands,
    ) -> impl std::future::Future<Output = Result<(), IngestError>> + Send + 'static {
        let fut = self.driver.propose_with(shard_group(shard), data, Some(Box::new(local)));
        async move { fut.await.map(|_| ()).map_err(propose_error) }
    }
}

/// The commands of one shard in one step of an outbox entry, shared with
/// the outbox rather than copied.
struct StepCommands {
    steps: Arc<Vec<Step>>,
    step: usize,
    shard: u32,
}

impl CommandSource for StepCommands {
    fn commands(&self) -> &[Command] {
        match &self.steps[self.step] {
            Step::Writes { by_shard, .. } => by_shard.get(&self.shard).map_or(&[], Vec::as_slice),
            Step::Move { .. } => &[],
        }
    }
}

/// Awaits futures concurrently (they are already proposed; awaiting only
/// collects the answers).
async fn futures_join<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futures: Vec<F>,
) -> Result<Vec<T>, IngestError> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        // A proposal whose task died has no answer: the step is not known
        // to be committed, so it fails (and is retried) rather than counting.
        out.push(h.await.map_err(|e| IngestError::Unavailable(format!("a shard proposal failed: {e}")))?);
    }
    Ok(out)
}
