//! `cohort load`: NDJSON files (plain or gzip) to a node, one Segment Spec
//! message a line, in file order.
//!
//! # How a file travels
//!
//! A reader thread cuts the file into batches of `--batch` messages (and at
//! most [`MAX_BATCH_BYTES`]) and runs up to two batches ahead; the command
//! sends them one at a time with `Ingest.IngestBatch` and waits for each
//! reply before sending the next. One call per batch, rather than one
//! `IngestStream` per file, because the node replies to a batch once it is
//! durable: the progress bar shows what the node has made durable, not what
//! was written to a socket, and when the node fails halfway the command can
//! say which lines were loaded. Batches go one after the other so that the
//! node applies the messages in file order (last write wins by message time,
//! and ties go to the later message).
//!
//! # Lines and positions
//!
//! Lines are counted from 1, blank ones included, whether they end with
//! `\n`, `\r\n` or the end of the file. Blank lines (only whitespace) are
//! skipped. Each batch keeps the line of each message it carries, so a
//! rejection's position (0-based within its batch) maps back to `FILE:LINE`.
//! A line that is not JSON is sent like any other: the node rejects it with
//! its position, keeps the rejection where `cohort rejected` lists it, and
//! the rest of the file loads. Two kinds of line cannot travel and are
//! rejected here, reported the same way: a line that is not UTF-8 (a gRPC
//! string must be) and a line longer than [`MAX_LINE_BYTES`] (a batch must
//! fit in a gRPC message).

#![allow(clippy::print_stdout)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value as Json};

use super::output::{self, Column, Out, Table};
use super::{LoadArgs, Node};
use crate::proto::v1::{IngestBatchRequest, Rejection};

/// A batch is cut once its messages reach this many bytes, well under the
/// 4 MiB a node accepts in one gRPC message by default.
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Longest line sent, bytes; a longer one is rejected here (with a batch cut
/// at [`MAX_BATCH_BYTES`], a batch stays under 3 MiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Lines read into one batch at most, blank and locally rejected ones
/// included, so that a file of blank lines still moves the progress bar.
const MAX_BATCH_LINES: u64 = 100_000;

/// Rejections printed in human output; `--json` lists them all.
const SHOWN_REJECTIONS: usize = 20;

/// Batches the reader thread may run ahead of the sender.
const READ_AHEAD: usize = 2;

/// How standard input (`-`) is named in reports.
pub const STDIN_NAME: &str = "stdin";

/// The request header naming the door, `load` for this command.
pub const SOURCE_HEADER: &str = "x-cohort-source";

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A file that cannot be read to the end.
#[derive(Debug)]
pub enum LoadError {
    /// The file cannot be opened.
    Open {
        /// The file, as named on the command line.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The gzip data is not gzip, or is damaged or cut short.
    Gzip {
        /// The file.
        file: String,
        /// Lines read before the damage (0: the header is bad).
        line: u64,
        /// What the decoder said.
        source: std::io::Error,
    },
    /// Reading failed for another reason.
    Read {
        /// The file.
        file: String,
        /// Lines read before the failure.
        line: u64,
        /// Why.
        source: std::io::Error,
    },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Open { file, source } => write!(f, "cannot open {file}: {source}"),
            LoadError::Gzip { file, line: 0, source } => write!(f, "{file}: not a valid gzip file: {source}"),
            LoadError::Gzip { file, line, source } => {
                write!(f, "{file}: the gzip data is damaged after line {line}: {source}")
            }
            LoadError::Read { file, line, source } => {
                write!(f, "{file}: cannot read after line {line}: {source}")
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None // The cause is part of the message.
    }
}

/// Counts the bytes read from the raw file, under any decompression, for
/// the progress bar.
struct Counting<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Lines of one NDJSON file cut into batches.
pub struct NdjsonReader {
    name: String,
    input: Box<dyn BufRead + Send>,
    gzip: bool,
    raw_bytes: Arc<AtomicU64>,
    total_bytes: Option<u64>,
    line: u64,
    eof: bool,
    /// A read error met after some lines of a batch: those lines are
    /// returned first, the error on the next call.
    failed: Option<LoadError>,
}

/// One batch: the messages to send and the line of each.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages, in file order.
    pub messages: Vec<String>,
    /// The 1-based line of each message.
    pub lines: Vec<u64>,
    /// Lines rejected before sending (not UTF-8, too long).
    pub local: Vec<LineRejection>,
    /// Lines read so far in the file, this batch included.
    pub last_line: u64,
    /// Bytes of the raw (possibly compressed) file read so far.
    pub raw_offset: u64,
}

/// A rejection placed in its file.
#[derive(Clone, Debug, PartialEq)]
pub struct LineRejection {
    /// The 1-based line; `None` when the node named a position outside the
    /// batch (a node bug, reported rather than hidden).
    pub line: Option<u64>,
    /// The refused field, empty when the whole message was refused.
    pub field: String,
    /// Why.
    pub reason: String,
    /// The message's `messageId`, when it had one.
    pub message_id: String,
    /// True when rejected by the CLI before sending.
    pub local: bool,
}

impl NdjsonReader {
    /// Opens a file (`-`: standard input), decompressing gzip when the name
    /// ends in `.gz` or the data starts with the gzip magic. A gzip header
    /// that is not valid fails here, before anything is sent.
    pub fn open(path: &Path) -> Result<NdjsonReader, LoadError> {
        let name = if path.as_os_str() == "-" { STDIN_NAME.to_string() } else { path.display().to_string() };
        let raw_bytes = Arc::new(AtomicU64::new(0));
        let (raw, total_bytes): (Box<dyn Read + Send>, Option<u64>) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdin()), None)
        } else {
            let file = File::open(path).map_err(|source| LoadError::Open { file: name.clone(), source })?;
            let len = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(file), len)
        };
        let mut raw = BufReader::with_capacity(256 * 1024, Counting { inner: raw, bytes: raw_bytes.clone() });
        let head =
            raw.fill_buf().map_err(|source| LoadError::Read { file: name.clone(), line: 0, source })?;
        // An empty file is empty whatever its name says.
        let gzip = head.starts_with(&GZIP_MAGIC) || (name.ends_with(".gz") && !head.is_empty());
        let input: Box<dyn BufRead + Send> = if gzip {
            let mut decoded = BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(raw));
            // Decode the header now, so that a file that is not gzip fails
            // with its name before the first batch is sent.
            decoded.fill_buf().map_err(|source| LoadError::Gzip { file: name.clone(), line: 0, source })?;
            Box::new(decoded)
        } else {
            Box::new(raw)
        };
        Ok(NdjsonReader { name, input, gzip, raw_bytes, total_bytes, line: 0, eof: false, failed: None })
    }

    /// The file's name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw file's size, when known (not for standard input).
    pub fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }

    /// True when the data is gzip.
    pub fn is_gzip(&self) -> bool {
        self.gzip
    }

    fn error(&self, source: std::io::Error) -> LoadError {
        let (file, line) = (self.name.clone(), self.line);
        if self.gzip {
            LoadError::Gzip { file, line, source }
        } else {
            LoadError::Read { file, line, source }
        }
    }

    /// Reads one line into `buf` without its end (`\n` or `\r\n`), keeping
    /// at most `MAX_LINE_BYTES + 1` bytes of it so that a huge line cannot
    /// exhaust memory. Returns the line's full length, or `None` at the end.
    fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
        buf.clear();
        let mut len = 0usize;
        let mut any = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], i + 1),
                None => (chunk, chunk.len()),
            };
            let room = (MAX_LINE_BYTES + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&part[..part.len().min(room)]);
            len += part.len();
            let found_newline = done > part.len();
            self.input.consume(done);
            if found_newline {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if buf.last() == Some(&b'\r') && len <= MAX_LINE_BYTES + 1 {
            buf.pop();
            len -= 1;
        }
        Ok(Some(len))
    }

    /// Reads the next batch: up to `max_messages` messages and about
    /// `max_bytes` bytes. `None` once the file is done. A read error ends
    /// the file, after the lines read before it have been returned.
    pub fn next_batch(&mut self, max_messages: usize, max_bytes: usize) -> Result<Option<Batch>, LoadError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.eof {
            return Ok(None);
        }
        let mut batch = Batch::default();
        let mut bytes = 0usize;
        let mut lines = 0u64;
        let mut buf = Vec::new();
        while batch.messages.len() < max_messages.max(1) && bytes < max_bytes && lines < MAX_BATCH_LINES {
            let len = match self.read_line(&mut buf) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    self.eof = true;
                    break;
                }
                Err(e) if lines == 0 => {
                    self.eof = true;
                    return Err(self.error(e));
                }
                Err(e) => {
                    self.eof = true;
                    self.failed = Some(self.error(e));
                    break;
                }
            };
            self.line += 1;
            lines += 1;
            if buf.iter().all(u8::is_ascii_whitespace) && len == buf.len() {
                continue;
            }
            let reject = |reason: String| LineRejection {
                line: Some(self.line),
                field: String::new(),
                reason,
                message_id: String::new(),
                local: true,
            };
            if len > MAX_LINE_BYTES {
                batch.local.push(reject(format!(
                    "the line is {len} bytes, more than the {MAX_LINE_BYTES} a message sent by `cohort load` may have"
                )));
                continue;
            }
            match String::from_utf8(std::mem::take(&mut buf)) {
                Ok(text) => {
                    bytes += text.len();
                    batch.messages.push(text);
                    batch.lines.push(self.line);
                }
                Err(e) => batch.local.push(reject(format!(
                    "the line is not UTF-8 (invalid byte at column {})",
                    e.utf8_error().valid_up_to() + 1
                ))),
            }
        }
        if lines == 0 {
            return Ok(None);
        }
        batch.last_line = self.line;
        batch.raw_offset = self.raw_bytes.load(Ordering::Relaxed);
        Ok(Some(batch))
    }
}

impl Batch {
    /// Places the node's rejections for this batch (positions 0-based within
    /// it) and this batch's local ones in the file, in line order.
    pub fn place(&self, rejections: &[Rejection]) -> Vec<LineRejection> {
        let mut placed: Vec<LineRejection> = self.local.clone();
        for r in rejections {
            let line = usize::try_from(r.position).ok().and_then(|p| self.lines.get(p)).copied();
            let reason = if line.is_some() {
                r.reason.clone()
            } else {
                format!(
                    "{} (the node named position {} of a batch of {} messages)",
                    r.reason,
                    r.position,
                    self.messages.len()
                )
            };
            placed.push(LineRejection {
                line,
                field: r.field.clone(),
                reason,
                message_id: r.message_id.clone(),
                local: false,
            });
        }
        // Stable: the node's order is kept among one message's fields.
        placed.sort_by_key(|r| r.line.unwrap_or(u64::MAX));
        placed
    }
}

/// What loading one file did.
#[derive(Debug, Default)]
pub struct FileReport {
    /// The file as named.
    pub file: String,
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Messages sent to the node.
    pub sent: u64,
    /// Messages applied.
    pub applied: u64,
    /// Messages already applied before (same `messageId`).
    pub duplicates: u64,
    /// Every rejection, in line order.
    pub rejections: Vec<LineRejection>,
    /// Seconds the file took.
    pub secs: f64,
    /// False when loading stopped on an error.
    pub complete: bool,
}

impl FileReport {
    /// Messages refused whole.
    pub fn rejected_messages(&self) -> u64 {
        self.rejections.iter().filter(|r| r.field.is_empty()).count() as u64
    }

    /// Fields refused in messages that were otherwise applied.
    pub fn rejected_fields(&self) -> u64 {
        self.rejections.iter().filter(|r| !r.field.is_empty()).count() as u64
    }
}

/// Checks that every file can be opened before anything is sent, so that a
/// mistyped third name does not leave the first two loaded.
pub fn check_files(files: &[PathBuf]) -> anyhow::Result<()> {
    for path in files {
        if path.as_os_str() == "-" {
            continue;
        }
        File::open(path).map_err(|source| LoadError::Open { file: path.display().to_string(), source })?;
    }
    if files.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        anyhow::bail!("standard input (`-`) can be loaded only once");
    }
    Ok(())
}

/// Runs `cohort load`.
pub async fn run(node: &Node, args: &LoadArgs, json: bool) -> anyhow::Result<()> {
    check_files(&args.files)?;
    let mut reports = Vec::new();
    let mut failure = None;
    for path in &args.files {
        let file = if path.as_os_str() == "-" { STDIN_NAME.to_string() } else { path.display().to_string() };
        let mut report = FileReport { file, ..FileReport::default() };
        let result = load_file(node, path, args.batch as usize, &mut report).await;
        reports.push(report);
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    // What was loaded is printed even when a file failed, then the error.
    if json {
        Out::json(&report_json(&reports))?;
    } else {
        Out::text(&report_text(&reports))?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Loads one file, filling `report` as batches are acknowledged.
async fn load_file(
    node: &Node,
    path: &Path,
    batch_size: usize,
    report: &mut FileReport,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let reader = NdjsonReader::open(path)?;
    let bar = progress_bar(&reader);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Batch, LoadError>>(READ_AHEAD);
    let thread = std::thread::Builder::new()
        .name("cohort-load-reader".into())
        .spawn(move || {
            let mut reader = reader;
            loop {
                let next = reader.next_batch(batch_size, MAX_BATCH_BYTES);
                let stop = !matches!(next, Ok(Some(_)));
                let item = match next {
                    Ok(Some(batch)) => Ok(batch),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                // A closed channel means the sender stopped on an error.
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
        })
        .context("cannot start the reader thread")?;
    let mut client = node.ingest();
    let result = async {
        while let Some(item) = rx.recv().await {
            let batch = item?;
            if !batch.messages.is_empty() {
                let mut request = node.request(IngestBatchRequest { messages: batch.messages.clone() });
                // Tells the node where the messages come from, for its
                // rejection log (`source`); a node that ignores it says "grpc".
                request
                    .metadata_mut()
                    .insert(SOURCE_HEADER, tonic::metadata::MetadataValue::from_static("load"));
                let reply = node.call(client.ingest_batch(request)).await.map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "{}: the batch of lines {}-{} failed; lines before it were loaded",
                        report.file,
                        batch.lines.first().copied().unwrap_or(batch.last_line),
                        batch.last_line
                    ))
                })?;
                let reply = reply.into_inner();
                report.applied += reply.applied;
                report.duplicates += reply.duplicates;
                report.rejections.extend(batch.place(&reply.rejections));
            } else {
                report.rejections.extend(batch.place(&[]));
            }
            report.sent += batch.messages.len() as u64;
            report.lines = batch.last_line;
            bar.set_position(batch.raw_offset);
            bar.set_message(format!("line {}", output::count(report.lines)));
        }
        anyhow::Ok(())
    }
    .await;
    // Dropping the receiver unblocks a reader waiting to send. On an error
    // the reader is not joined: it may be blocked reading standard input,
    // and the process is about to exit.
    drop(rx);
    if result.is_ok() {
        let _ = thread.join();
    }
    bar.finish_and_clear();
    report.secs = started.elapsed().as_secs_f64();
    report.complete = result.is_ok();
    result
}

/// A bar over the raw file's bytes (a spinner for standard input), on
/// standard error; indicatif draws nothing when that is not a terminal.
fn progress_bar(reader: &NdjsonReader) -> ProgressBar {
    let template = match reader.total_bytes() {
        Some(_) => "{prefix} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        None => "{prefix} {spinner} {bytes} {bytes_per_sec} {msg}",
    };
    let bar = match reader.total_bytes() {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    // The file's own name: a long path would push the bar off the line.
    let name =
        Path::new(reader.name()).file_name().map_or_else(|| reader.name().into(), |n| n.to_string_lossy());
    bar.set_prefix(name.into_owned());
    bar
}

/// `FILE:LINE`, or `FILE:?` when the node named a position outside the batch.
fn location(file: &str, line: Option<u64>) -> String {
    match line {
        Some(line) => format!("{file}:{line}"),
        None => format!("{file}:?"),
    }
}

/// The human report: a table of files, then the first rejections.
fn report_text(reports: &[FileReport]) -> String {
    let mut table = Table::new(vec![
        Column::text("file"),
        Column::num("lines"),
        Column::num("sent"),
        Column::num("applied"),
        Column::num("duplicates"),
        Column::num("rejected"),
        Column::num("fields rejected"),
        Column::num("time"),
    ]);
    let row = |file: String, r: &[&FileReport]| {
        let sum = |f: &dyn Fn(&FileReport) -> u64| r.iter().map(|x| f(x)).sum::<u64>();
        let secs: f64 = r.iter().map(|x| x.secs).sum();
        vec![
            file,
            output::count(sum(&|x| x.lines)),
            output::count(sum(&|x| x.sent)),
            output::count(sum(&|x| x.applied)),
            output::count(sum(&|x| x.duplicates)),
            output::count(sum(&|x| x.rejected_messages())),
            output::count(sum(&|x| x.rejected_fields())),
            output::elapsed(std::time::Duration::from_secs_f64(secs)),
        ]
    };
    for r in reports {
        let name = if r.complete { r.file.clone() } else { format!("{} (stopped)", r.file) };
        table.push(row(name, &[r]));
    }
    if reports.len() > 1 {
        table.push(row("total".into(), &reports.iter().collect::<Vec<_>>()));
    }
    let mut out = table.render();
    let all: Vec<(&str, &LineRejection)> =
        reports.iter().flat_map(|r| r.rejections.iter().map(move |x| (r.file.as_str(), x))).collect();
    if !all.is_empty() {
        let mut rejections =
            Table::new(vec![Column::text("line"), Column::text("field"), Column::text("reason")]);
        for (file, r) in all.iter().take(SHOWN_REJECTIONS) {
            let field = if r.field.is_empty() { "(message)".to_string() } else { r.field.clone() };
            rejections.push(vec![location(file, r.line), field, r.reason.clone()]);
        }
        out.push_str("\nrejections:\n");
        out.push_str(&rejections.render());
        if all.len() > SHOWN_REJECTIONS {
            out.push_str(&format!(
                "... and {} more (--json lists them all; `cohort rejected` shows the node's log)\n",
                all.len() - SHOWN_REJECTIONS
            ));
        }
    }
    out
}

/// The `--json` report: every file with every rejection, and the totals.
fn report_json(reports: &[FileReport]) -> Json {
    let files: Vec<Json> = reports
        .iter()
        .map(|r| {
            json!({
                "file": r.file,
                "complete": r.complete,
                "lines": r.lines,
                "sent": r.sent,
                "applied": r.applied,
                "duplicates": r.duplicates,
                "rejected": r.rejected_messages(),
                "fields_rejected": r.rejected_fields(),
                "secs": r.secs,
                "rejections": r.rejections.iter().map(|x| json!({
                    "file": r.file,
                    "line": x.line,
                    "field": x.field,
                    "reason": x.reason,
                    "message_id": x.message_id,
                    "local": x.local,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let sum = |f: &dyn Fn(&FileReport) -> u64| reports.iter().map(f).sum::<u64>();
    json!({
        "files": files,
        "lines": sum(&|r| r.lines),
        "sent": sum(&|r| r.sent),
        "applied": sum(&|r| r.applied),
        "duplicates": sum(&|r| r.duplicates),
        "rejected": sum(&|r| r.rejected_messages()),
        "fields_rejected": sum(&|r| r.rejected_fields()),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Every batch of a file: (messages, lines) pairs, plus local rejections.
    fn read_all(path: &Path, per_batch: usize) -> (Vec<Batch>, Vec<(String, u64)>) {
        let mut reader = NdjsonReader::open(path).unwrap();
        let mut batches = Vec::new();
        while let Some(b) = reader.next_batch(per_batch, MAX_BATCH_BYTES).unwrap() {
            assert_eq!(b.messages.len(), b.lines.len());
            batches.push(b);
        }
        let pairs =
            batches.iter().flat_map(|b| b.messages.iter().cloned().zip(b.lines.iter().copied())).collect();
        (batches, pairs)
    }

    const TEXT: &[u8] = b"{\"a\":1}\n\n{\"a\":2}\r\n   \r\n{\"a\":3}\n{\"a\":4}";

    fn expected() -> Vec<(String, u64)> {
        vec![
            (r#"{"a":1}"#.into(), 1),
            (r#"{"a":2}"#.into(), 3),
            (r#"{"a":3}"#.into(), 5),
            (r#"{"a":4}"#.into(), 6),
        ]
    }

    #[test]
    fn lines_count_blank_ones_and_lose_their_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "m.ndjson", TEXT);
        let (batches, pairs) = read_all(&path, 100);
        assert_eq!(pairs, expected());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].last_line, 6);
        assert_eq!(batches[0].raw_offset, TEXT.len() as u64);
    }

    #[test]
    fn batches_are_cut_and_keep_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "m.ndjson", TEXT);
        let (batches, pairs) = read_all(&path, 2);
        assert_eq!(pairs, expected());
        let sizes: Vec<usize> = batches.iter().map(|b| b.messages.len()).collect();
        assert_eq!(sizes, vec![2, 2]);
        assert_eq!(batches[0].lines, vec![1, 3]);
        assert_eq!(batches[1].lines, vec![5, 6]);
        assert_eq!(batches[0].last_line, 3);
        assert_eq!(batches[1].last_line, 6);
    }

    #[test]
    fn batches_are_cut_by_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "m.ndjson", b"aaaa\nbbbb\ncccc\n");
        let mut reader = NdjsonReader::open(&path).unwrap();
        let first = reader.next_batch(100, 8).unwrap().unwrap();
        assert_eq!(first.messages, vec!["aaaa", "bbbb"]);
        let second = reader.next_batch(100, 8).unwrap().unwrap();
        assert_eq!(second.messages, vec!["cccc"]);
        assert_eq!(second.lines, vec![3]);
        assert!(reader.next_batch(100, 8).unwrap().is_none());
    }

    #[test]
    fn a_final_line_without_newline_and_a_trailing_newline_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir, "a.ndjson", b"x\ny");
        let b = write(&dir, "b.ndjson", b"x\ny\n");
        let c = write(&dir, "c.ndjson", b"x\r\ny\r\n");
        let want = vec![("x".to_string(), 1), ("y".to_string(), 2)];
        assert_eq!(read_all(&a, 10).1, want);
        assert_eq!(read_all(&b, 10).1, want);
        assert_eq!(read_all(&c, 10).1, want);
    }

    #[test]
    fn empty_and_blank_files_have_no_messages() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(&dir, "e.ndjson", b"");
        assert!(read_all(&empty, 10).0.is_empty());
        let empty_gz = write(&dir, "e.ndjson.gz", b"");
        assert!(read_all(&empty_gz, 10).0.is_empty());
        let blank = write(&dir, "b.ndjson", b"\n \n\t\r\n");
        let (batches, pairs) = read_all(&blank, 10);
        assert!(pairs.is_empty());
        assert_eq!(batches.len(), 1, "blank lines are still counted");
        assert_eq!(batches[0].last_line, 3);
    }

    #[test]
    fn gzip_is_read_by_name_or_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let by_name = write(&dir, "m.ndjson.gz", &gzip(TEXT));
        let by_magic = write(&dir, "m.ndjson", &gzip(TEXT));
        for path in [by_name, by_magic] {
            assert!(NdjsonReader::open(&path).unwrap().is_gzip());
            let (batches, pairs) = read_all(&path, 3);
            assert_eq!(pairs, expected());
            let last = batches.last().unwrap();
            assert_eq!(last.last_line, 6);
            assert_eq!(last.raw_offset, std::fs::metadata(&path).unwrap().len());
        }
    }

    #[test]
    fn concatenated_gzip_members_are_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = gzip(b"{\"a\":1}\n{\"a\":2}\n");
        bytes.extend(gzip(b"{\"a\":3}\n"));
        let path = write(&dir, "m.gz", &bytes);
        let lines: Vec<u64> = read_all(&path, 10).1.into_iter().map(|(_, l)| l).collect();
        assert_eq!(lines, vec![1, 2, 3]);
    }

    #[test]
    fn a_gz_file_that_is_not_gzip_fails_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bad.ndjson.gz", b"{\"a\":1}\n");
        let err = NdjsonReader::open(&path).err().expect("not gzip");
        let text = err.to_string();
        assert!(matches!(err, LoadError::Gzip { line: 0, .. }), "{text}");
        assert!(text.contains("bad.ndjson.gz") && text.contains("not a valid gzip file"), "{text}");
    }

    #[test]
    fn damaged_gzip_fails_naming_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..2_000).flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes()).collect();
        let mut bytes = gzip(&text);
        bytes.truncate(bytes.len() / 2);
        let path = write(&dir, "cut.ndjson.gz", &bytes);
        let mut reader = NdjsonReader::open(&path).unwrap();
        let mut last_sent = 0;
        let err = loop {
            match reader.next_batch(100, MAX_BATCH_BYTES) {
                Ok(Some(b)) => last_sent = b.last_line,
                Ok(None) => panic!("a cut gzip file read to the end"),
                Err(e) => break e,
            }
        };
        let message = err.to_string();
        assert!(message.contains("cut.ndjson.gz: the gzip data is damaged after line"), "{message}");
        // Every line read before the damage was handed out to be sent.
        assert!(matches!(err, LoadError::Gzip { line, .. } if line > 0 && line == last_sent), "{message}");
        assert!(reader.next_batch(100, MAX_BATCH_BYTES).unwrap().is_none(), "the file ends at the damage");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = NdjsonReader::open(Path::new("/nonexistent/x.ndjson")).err().unwrap();
        assert!(err.to_string().starts_with("cannot open /nonexistent/x.ndjson:"), "{err}");
        assert!(check_files(&[PathBuf::from("/nonexistent/x.ndjson")]).is_err());
    }

    #[test]
    fn lines_that_cannot_travel_are_rejected_here_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"{\"a\":1}\n".to_vec();
        bytes.extend(b"{\"a\":\"\xff\"}\n");
        bytes.extend(vec![b'x'; MAX_LINE_BYTES + 10]);
        bytes.extend(b"\n{\"a\":4}\n");
        let path = write(&dir, "m.ndjson", &bytes);
        let (batches, pairs) = read_all(&path, 10);
        assert_eq!(pairs, vec![(r#"{"a":1}"#.to_string(), 1), (r#"{"a":4}"#.to_string(), 4)]);
        let local: Vec<&LineRejection> = batches.iter().flat_map(|b| &b.local).collect();
        assert_eq!(local.len(), 2);
        assert_eq!(local[0].line, Some(2));
        assert!(
            local[0].reason.contains("not UTF-8") && local[0].reason.contains("column 7"),
            "{}",
            local[0].reason
        );
        assert_eq!(local[1].line, Some(3));
        assert!(local[1].reason.contains(&format!("{} bytes", MAX_LINE_BYTES + 10)), "{}", local[1].reason);
        assert!(local.iter().all(|r| r.local && r.field.is_empty()));
    }

    #[test]
    fn positions_map_back_to_lines() {
        let dir = tempfile::tempdir().unwrap();
        // Line 4 is not JSON: it is sent, and the node rejects it by position.
        let path = write(&dir, "m.ndjson", b"{\"a\":1}\n\n{\"a\":2}\nnot json\n\n{\"a\":3}\n{\"a\":4}\n");
        let mut reader = NdjsonReader::open(&path).unwrap();
        let first = reader.next_batch(3, MAX_BATCH_BYTES).unwrap().unwrap();
        let second = reader.next_batch(3, MAX_BATCH_BYTES).unwrap().unwrap();
        assert_eq!(first.lines, vec![1, 3, 4]);
        assert_eq!(second.lines, vec![6, 7]);
        let rejection = |position: u64, field: &str| Rejection {
            position,
            field: field.into(),
            reason: "bad".into(),
            message_id: String::new(),
            received_at: String::new(),
            source: "grpc".into(),
        };
        // The node reports positions within each batch, in any order.
        let placed = first.place(&[rejection(2, ""), rejection(0, "traits.age")]);
        let lines: Vec<Option<u64>> = placed.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![Some(1), Some(4)]);
        assert_eq!(placed[0].field, "traits.age");
        let placed = second.place(&[rejection(1, "traits.x")]);
        assert_eq!(placed[0].line, Some(7));
        // A position outside the batch is reported, not dropped.
        let placed = second.place(&[rejection(9, "")]);
        assert_eq!(placed[0].line, None);
        assert!(placed[0].reason.contains("position 9"), "{}", placed[0].reason);
    }

    #[test]
    fn the_report_lists_rejections_with_their_lines() {
        let report = FileReport {
            file: "m.ndjson".into(),
            lines: 7,
            sent: 5,
            applied: 4,
            duplicates: 0,
            rejections: vec![
                LineRejection {
                    line: Some(4),
                    field: String::new(),
                    reason: "not JSON".into(),
                    message_id: String::new(),
                    local: false,
                },
                LineRejection {
                    line: Some(6),
                    field: "traits.age".into(),
                    reason: "expected a number".into(),
                    message_id: "m6".into(),
                    local: false,
                },
            ],
            secs: 0.25,
            complete: true,
        };
        assert_eq!(report.rejected_messages(), 1);
        assert_eq!(report.rejected_fields(), 1);
        let text = report_text(std::slice::from_ref(&report));
        assert!(text.contains("m.ndjson:4  (message)   not JSON"), "{text}");
        assert!(text.contains("m.ndjson:6  traits.age  expected a number"), "{text}");
        let json = report_json(&[report]);
        assert_eq!(json["applied"], 4);
        assert_eq!(json["rejected"], 1);
        assert_eq!(json["files"][0]["rejections"][1]["line"], 6);
    }
}
