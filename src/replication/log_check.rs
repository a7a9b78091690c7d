//! A read-only check of a raft-engine log directory, run before the engine
//! opens it.
//!
//! raft-engine, opened with `TolerateTailCorruption`, cuts the last file of
//! a queue at the first batch it cannot read, whatever lies behind it, and
//! silently drops every file older than a gap in the file numbers; entry
//! blocks inside a file are only checked when read, where raft-rs panics on
//! the error. So before the node opens the engine, [`check_dir`] walks every
//! log file itself, without writing: the file header, each batch's framing,
//! the checksum of its entries block and of its footer (signed with the
//! file's number, as raft-engine does), and the sequence of file numbers.
//!
//! A batch that cannot be read is a *torn tail* (what a crash in the middle
//! of a write leaves) only when it is in the last file of its queue and no
//! valid batch of that file follows it: behind the end of the written data
//! lies zeroed preallocated space or, in a recycled file, older batches
//! signed with another file's number. Anything else is [`LogDamage`], named
//! by file and byte offset, and the node refuses to start on it.
//!
//! The format read here is raft-engine 0.4's (`file_pipe_log/format.rs`,
//! `log_batch.rs`): a file starts with a 53-byte magic, a big-endian `u64`
//! version and, from version 2, a `u64` alignment; a batch is a 16-byte
//! header (`len << 8 | compression`, footer offset, both big-endian), the
//! entries block ending in a little-endian CRC-32, then the footer (item
//! index) ending in a little-endian CRC-32 XORed with the low 32 bits of the
//! file number (version 2).

use std::path::{Path, PathBuf};

/// raft-engine's file magic.
const MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
/// A batch header: length with compression type, and footer offset.
const BATCH_HEADER_LEN: usize = 16;
/// A trailing CRC-32.
const CHECKSUM_LEN: usize = 4;

/// The two file queues of raft-engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Queue {
    /// `NNNN.raftlog`: appended entries.
    Append,
    /// `NNNN.rewrite`: live entries rewritten out of purged files.
    Rewrite,
}

/// Something wrong with a log file, by file and byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDamage {
    /// The file.
    pub file: PathBuf,
    /// Byte offset in it where the damage starts.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for LogDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.file.display(), self.offset, self.problem)
    }
}

/// A cut the node makes itself before raft-engine opens the log, because
/// raft-engine would refuse it (see [`check_dir`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailCut {
    /// Cut the file to this length: its zeroed space behind the last record.
    Truncate(PathBuf, u64),
    /// Remove the file: it holds no record.
    Remove(PathBuf),
}

impl std::fmt::Display for TailCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailCut::Truncate(path, len) => write!(f, "{} to {len} bytes", path.display()),
            TailCut::Remove(path) => write!(f, "removing {}", path.display()),
        }
    }
}

impl TailCut {
    /// Makes the cut.
    pub fn apply(&self) -> std::io::Result<()> {
        match self {
            TailCut::Truncate(path, len) => {
                let file = std::fs::OpenOptions::new().write(true).open(path)?;
                file.set_len(*len)?;
                file.sync_all()
            }
            TailCut::Remove(path) => std::fs::remove_file(path),
        }
    }
}

/// What [`check_dir`] found.
#[derive(Debug, Default)]
pub struct LogCheck {
    /// Log files read.
    pub files: usize,
    /// Bytes of batches verified.
    pub bytes: u64,
    /// Torn last records: raft-engine cuts these when it opens, with a
    /// warning; they held nothing that was acknowledged.
    pub torn: Vec<LogDamage>,
    /// Anything else: the node must not start.
    pub damage: Vec<LogDamage>,
    /// Cuts the node makes before the engine opens: each torn record, and a
    /// torn tail across a file switch (each also listed in `torn`).
    pub cuts: Vec<TailCut>,
}

/// One log file by queue and number.
struct LogFile {
    queue: Queue,
    seq: u64,
    path: PathBuf,
}

fn parse_name(name: &str) -> Option<(Queue, u64)> {
    let (digits, queue) = if let Some(d) = name.strip_suffix(".raftlog") {
        (d, Queue::Append)
    } else if let Some(d) = name.strip_suffix(".rewrite") {
        (d, Queue::Rewrite)
    } else {
        return None;
    };
    (digits.len() == 16).then(|| digits.parse().ok().map(|seq| (queue, seq)))?
}

/// Checks every log file of the raft-engine directory `dir` (missing: no
/// files). Errors only when the directory cannot be listed; a file that
/// cannot be read is damage.
pub fn check_dir(dir: &Path) -> std::io::Result<LogCheck> {
    let mut check = LogCheck::default();
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                if let Some((queue, seq)) = name.to_str().and_then(parse_name) {
                    files.push(LogFile { queue, seq, path: entry.path() });
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(check),
        Err(e) => return Err(e),
    }
    files.sort_by_key(|f| (f.queue, f.seq));
    let mut ends = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let last_of_queue = files.get(i + 1).is_none_or(|n| n.queue != f.queue);
        if let Some(next) = files.get(i + 1).filter(|n| n.queue == f.queue && n.seq != f.seq + 1) {
            check.damage.push(LogDamage {
                file: next.path.clone(),
                offset: 0,
                problem: format!(
                    "log files {}..{} are missing before it (raft-engine would drop every file before the gap)",
                    f.seq + 1,
                    next.seq
                ),
            });
        }
        check.files += 1;
        match std::fs::read(&f.path) {
            Ok(bytes) => ends.push((f, Some(check_file(f, &bytes, last_of_queue, &mut check)))),
            Err(e) => {
                ends.push((f, None));
                check.damage.push(LogDamage {
                    file: f.path.clone(),
                    offset: 0,
                    problem: format!("cannot be read: {e}"),
                })
            }
        }
    }
    find_switch_tails(&ends, &mut check);
    Ok(check)
}

/// A file that is not the last of its queue normally ends at its last
/// record (raft-engine cuts a file to its length when it switches to the
/// next), and raft-engine refuses to open one with zeroed space behind its
/// records. A write that fails on a full disk right at a switch leaves just
/// that: the old file with its preallocated tail, and a new file that
/// holds no record (its header unwritten). That is a torn tail, and it is
/// cut here: the old file to its records, the files after it removed. Zeroed
/// space behind the records of a file followed by files that hold records
/// is damage.
fn find_switch_tails(ends: &[(&LogFile, Option<FileEnd>)], check: &mut LogCheck) {
    let mut next = 0;
    for (i, (f, end)) in ends.iter().enumerate() {
        if i < next {
            continue; // A later file of a queue already decided.
        }
        let Some(end) = end.filter(|e| e.zero_tail) else { continue };
        let later: Vec<_> = ends[i + 1..].iter().take_while(|(n, _)| n.queue == f.queue).collect();
        next = i + 1 + later.len();
        if later.is_empty() {
            continue; // The last file: raft-engine reads past zeros itself.
        }
        let empty = |e: &Option<FileEnd>| e.is_some_and(|e| e.records == 0);
        let damage =
            LogDamage { file: f.path.clone(), offset: end.records_end as u64, problem: String::new() };
        if later.iter().all(|(_, e)| empty(e)) {
            check.torn.push(LogDamage {
                problem: format!(
                    "zeroed space behind the last record, and {} later file(s) with no record: a write that failed \
                     at a file switch (a full disk); the file is cut to its records and the later files removed",
                    later.len()
                ),
                ..damage
            });
            check.cuts.push(TailCut::Truncate(f.path.clone(), end.records_end as u64));
            for (n, _) in &later {
                check.cuts.push(TailCut::Remove(n.path.clone()));
            }
        } else {
            check.damage.push(LogDamage {
                problem: "zeroed space behind the last record of a file that later files with records follow"
                    .into(),
                ..damage
            });
        }
    }
}

/// A file's format: version and alignment.
fn parse_header(bytes: &[u8]) -> Result<(usize, u64, u64), String> {
    if bytes.len() < MAGIC.len() + 8 || !bytes.starts_with(MAGIC) {
        return Err(if bytes.len() < MAGIC.len() + 8 {
            format!("the file header is cut short ({} bytes)", bytes.len())
        } else {
            "the file header's magic is wrong".to_string()
        });
    }
    let version = be_u64(&bytes[MAGIC.len()..]);
    match version {
        1 => Ok((MAGIC.len() + 8, 1, 0)),
        2 if bytes.len() >= MAGIC.len() + 16 => Ok((MAGIC.len() + 16, 2, be_u64(&bytes[MAGIC.len() + 8..]))),
        2 => Err("the file header is cut short".to_string()),
        v => Err(format!("the file header names an unknown format version {v}")),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

/// The batch at `at`: its length when it is whole and its checksums hold
/// (under `signature` for the footer), else why not.
fn read_batch(bytes: &[u8], at: usize, signature: Option<u32>) -> Result<usize, String> {
    let Some(header) = bytes.get(at..at + BATCH_HEADER_LEN) else {
        return Err("the batch header is cut short".into());
    };
    let len_and_type = be_u64(header);
    let footer = be_u64(&header[8..]) as usize;
    let len = (len_and_type >> 8) as usize;
    if len_and_type as u8 > 1 {
        return Err(format!("the batch header names an unknown compression {}", len_and_type as u8));
    }
    if footer < BATCH_HEADER_LEN || footer > len || len < footer + CHECKSUM_LEN + 1 {
        return Err("the batch header is not consistent".into());
    }
    let Some(batch) = bytes.get(at..at.saturating_add(len)) else {
        return Err(format!("the batch runs past the end of the file ({len} bytes)"));
    };
    let items = &batch[footer..];
    let (index, sum) = items.split_at(items.len() - CHECKSUM_LEN);
    let expected = le_u32(sum) ^ signature.unwrap_or(0);
    let actual = crc32fast::hash(index);
    if expected != actual {
        return Err(format!("the batch index's checksum is wrong (expected {expected}, found {actual})"));
    }
    // Neither checksum covers the compression byte of the header: flipped,
    // it makes a sound block decode to other bytes than the index points
    // into (raft-engine then fails to read an entry, or panics slicing it).
    let indexed = indexed_entry_bytes(index)?;
    let entries = &batch[BATCH_HEADER_LEN..footer];
    if entries.is_empty() && indexed > 0 {
        return Err(format!("the batch index points into {indexed} bytes of entries, but it has none"));
    }
    if !entries.is_empty() {
        if entries.len() <= CHECKSUM_LEN {
            return Err("the entries block is too short".into());
        }
        let (data, sum) = entries.split_at(entries.len() - CHECKSUM_LEN);
        let (expected, actual) = (le_u32(sum), crc32fast::hash(data));
        if expected != actual {
            return Err(format!(
                "the entries block's checksum is wrong (expected {expected}, found {actual})"
            ));
        }
        let decoded = if len_and_type as u8 == 1 { lz4_decompressed_len(data)? } else { data.len() };
        if (decoded as u64) < indexed {
            return Err(format!(
                "the batch index points into {indexed} bytes of entries, but its entries block ({}) decodes to {decoded}",
                if len_and_type as u8 == 1 { "marked LZ4-compressed" } else { "marked plain" }
            ));
        }
    }
    Ok(len)
}

/// LZ4 compresses at most 255 to 1: a block that claims more is damaged.
const LZ4_MAX_RATIO: usize = 255;

/// raft-engine's variable-length `u64` (LEB128, at most 10 bytes).
fn read_var_u64(r: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = r.split_first() else { break };
        *r = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err("the batch index is cut short or holds a bad number".into())
}

fn read_u8(r: &mut &[u8]) -> Result<u8, String> {
    let Some((&b, rest)) = r.split_first() else { return Err("the batch index is cut short".into()) };
    *r = rest;
    Ok(b)
}

fn skip(r: &mut &[u8], n: u64) -> Result<(), String> {
    match usize::try_from(n).ok().filter(|&n| n <= r.len()) {
        Some(n) => {
            *r = &r[n..];
            Ok(())
        }
        None => Err("the batch index is cut short".into()),
    }
}

/// Walks a batch index (raft-engine's `LogItemBatch`, without its checksum)
/// and returns how many bytes of decoded entries it points into: each
/// `EntryIndexes` item lists the running end offset of its entries.
fn indexed_entry_bytes(index: &[u8]) -> Result<u64, String> {
    const TYPE_ENTRIES: u8 = 1;
    const TYPE_COMMAND: u8 = 2;
    const TYPE_KV: u8 = 3;
    let r = &mut &index[..];
    let mut end = 0u64;
    for _ in 0..read_var_u64(r)? {
        read_var_u64(r)?; // the group
        match read_u8(r)? {
            TYPE_ENTRIES => {
                let count = read_var_u64(r)?;
                if count > 0 {
                    read_var_u64(r)?; // the first index
                }
                for _ in 0..count {
                    let next = read_var_u64(r)?;
                    if next < end || next > u64::from(u32::MAX) {
                        return Err("the batch index's entry offsets are not in order".into());
                    }
                    end = next;
                }
            }
            TYPE_COMMAND => match read_u8(r)? {
                1 => {}
                2 => {
                    read_var_u64(r)?;
                }
                c => return Err(format!("the batch index names an unknown command {c}")),
            },
            TYPE_KV => {
                let op = read_u8(r)?;
                let key = read_var_u64(r)?;
                skip(r, key)?;
                match op {
                    1 => {
                        let value = read_var_u64(r)?;
                        skip(r, value)?;
                    }
                    2 => {}
                    op => return Err(format!("the batch index names an unknown key operation {op}")),
                }
            }
            t => return Err(format!("the batch index names an unknown item type {t}")),
        }
    }
    Ok(end)
}

/// The length `block` decompresses to as raft-engine reads it (its
/// `util::lz4::decompress_block`): a little-endian `u32` length, then an
/// LZ4 block of exactly that many bytes.
fn lz4_decompressed_len(block: &[u8]) -> Result<usize, String> {
    let Some((len, compressed)) = block.split_first_chunk::<4>() else {
        return Err("the entries block is marked LZ4-compressed but is too short".into());
    };
    let len = u32::from_le_bytes(*len) as usize;
    if compressed.is_empty() || len > compressed.len().saturating_mul(LZ4_MAX_RATIO) + 16 {
        return Err(format!(
            "the entries block is marked LZ4-compressed but its {} bytes claim {len}",
            compressed.len()
        ));
    }
    let mut out = vec![0u8; len];
    let (Ok(src_len), Ok(dst_len)) = (i32::try_from(compressed.len()), i32::try_from(len)) else {
        return Err(format!("the entries block is marked LZ4-compressed but claims {len} bytes"));
    };
    // SAFETY: LZ4_decompress_safe reads at most `src_len` bytes of
    // `compressed` and writes at most `dst_len` bytes into `out`, which
    // holds that many; it never reads or writes outside them, whatever the
    // input.
    let written = unsafe {
        lz4_sys::LZ4_decompress_safe(compressed.as_ptr().cast(), out.as_mut_ptr().cast(), src_len, dst_len)
    };
    if written != dst_len {
        return Err(format!(
            "the entries block is marked LZ4-compressed but does not decompress ({} of {len} bytes)",
            written.max(0)
        ));
    }
    Ok(len)
}

/// True when a valid batch of this file starts anywhere in `bytes[from..]`.
fn valid_batch_after(bytes: &[u8], from: usize, signature: Option<u32>) -> bool {
    (from..bytes.len().saturating_sub(BATCH_HEADER_LEN)).any(|at| {
        // Cheap rejections first: the compression byte and the footer offset.
        let b = &bytes[at..];
        b[7] <= 1 && b[8..12] == [0; 4] && read_batch(bytes, at, signature).is_ok()
    })
}

/// Where a file's records end, as [`check_file`] found it.
#[derive(Clone, Copy, Debug, Default)]
struct FileEnd {
    /// Offset just past its last valid record (or its header).
    records_end: usize,
    /// Valid records in it.
    records: usize,
    /// Zeroed space follows the records to the end of the file.
    zero_tail: bool,
}

fn check_file(f: &LogFile, bytes: &[u8], last_of_queue: bool, check: &mut LogCheck) -> FileEnd {
    let mut end = FileEnd::default();
    let damage =
        |offset: usize, problem: String| LogDamage { file: f.path.clone(), offset: offset as u64, problem };
    let (mut at, version, alignment) = match parse_header(bytes) {
        Ok(h) => h,
        Err(problem) => {
            // An empty or unwritten last file is what a crash right after
            // creating it leaves.
            let blank = bytes.iter().all(|&b| b == 0);
            let signature = Some(f.seq as u32);
            if last_of_queue && (blank || !valid_batch_after(bytes, 0, signature)) {
                check.torn.push(damage(0, problem));
            } else {
                check.damage.push(damage(0, problem));
            }
            return end;
        }
    };
    end.records_end = at;
    let signature = (version >= 2).then_some(f.seq as u32);
    while at < bytes.len() {
        if bytes[at..].iter().all(|&b| b == 0) {
            // Preallocated space behind the last write.
            end.zero_tail = true;
            return end;
        }
        match read_batch(bytes, at, signature) {
            Ok(len) => {
                check.bytes += len as u64;
                at += len;
                end.records_end = at;
                end.records += 1;
            }
            Err(problem) => {
                if alignment > 0 {
                    let aligned = at.div_ceil(alignment as usize) * alignment as usize;
                    if aligned != at && bytes.get(at..aligned).is_some_and(|p| p.iter().all(|&b| b == 0)) {
                        at = aligned;
                        continue;
                    }
                }
                let followed = valid_batch_after(bytes, at + 1, signature);
                let found = damage(at, problem);
                if last_of_queue && !followed {
                    // Cut here rather than left to raft-engine, which reads
                    // the torn header's length as it stands and reserves
                    // that much (a garbage length asked for 4 GB).
                    check.cuts.push(TailCut::Truncate(f.path.clone(), at as u64));
                    check.torn.push(found);
                } else {
                    check.damage.push(LogDamage {
                        problem: format!(
                            "{}{}",
                            found.problem,
                            if followed {
                                "; valid records follow it, so this is not a torn last write"
                            } else {
                                ""
                            }
                        ),
                        ..found
                    });
                }
                return end;
            }
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::storage::LogStore;
    use raft::eraftpb::Entry;

    /// A log of `n` batches of one entry each in group 7.
    fn write_log(dir: &Path, n: u64) {
        let store = LogStore::open(dir).unwrap();
        let g = store.group(7).unwrap();
        g.initialize(&store, &[1]).unwrap();
        for i in 1..=n {
            let mut batch = raft_engine::LogBatch::default();
            let e = Entry { index: i, term: 1, data: vec![i as u8; 300].into(), ..Default::default() };
            g.append(&mut batch, &[e]).unwrap();
            store.write(&mut batch, true).unwrap();
        }
    }

    fn log_file(dir: &Path) -> PathBuf {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
            .collect();
        files.sort();
        files.pop().unwrap()
    }

    #[test]
    fn a_whole_log_has_no_damage() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 50);
        let check = check_dir(dir.path()).unwrap();
        assert!(check.damage.is_empty() && check.torn.is_empty(), "{check:?}");
        assert!(check.files >= 1 && check.bytes > 50 * 300, "{check:?}");
    }

    #[test]
    fn a_flipped_byte_anywhere_but_the_last_record_is_damage_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 50);
        let file = log_file(dir.path());
        let clean = std::fs::read(&file).unwrap();
        let end = clean.iter().rposition(|&b| b != 0).unwrap();
        let mut damaged_somewhere = 0;
        for offset in [3usize, 60, 100, 400, end / 2, end - 600] {
            let mut bytes = clean.clone();
            bytes[offset] ^= 0x5a;
            std::fs::write(&file, &bytes).unwrap();
            let check = check_dir(dir.path()).unwrap();
            assert_eq!(check.damage.len(), 1, "flip at {offset}: {check:?}");
            let d = &check.damage[0];
            assert_eq!(d.file, file);
            assert!(
                d.offset as usize <= offset && offset - (d.offset as usize) < 1000,
                "flip at {offset}: {d}"
            );
            damaged_somewhere += 1;
        }
        assert_eq!(damaged_somewhere, 6);
    }

    /// The offset and compression byte of every batch in `bytes`.
    fn batches(bytes: &[u8]) -> Vec<(usize, u8)> {
        let (mut at, _, _) = parse_header(bytes).unwrap();
        let mut found = Vec::new();
        while at + BATCH_HEADER_LEN <= bytes.len() {
            let len_and_type = be_u64(&bytes[at..]);
            let len = (len_and_type >> 8) as usize;
            if len == 0 {
                break;
            }
            found.push((at, len_and_type as u8));
            at += len;
        }
        found
    }

    #[test]
    fn a_flipped_compression_flag_is_found_by_the_check_or_by_reading_the_log() {
        // Found by the raft_log fuzz target: the compression byte of a batch
        // header is under no checksum; flipped, raft-engine opens the log
        // and raft-rs panicked on the first read of the entry.
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 5);
        {
            // One batch large enough for raft-engine to compress it, then
            // one more so that it is not the last record.
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(7).unwrap();
            for i in 6..=7u64 {
                let mut batch = raft_engine::LogBatch::default();
                let size = if i == 6 { 64 << 10 } else { 10 };
                let e = Entry { index: i, term: 1, data: vec![b'x'; size].into(), ..Default::default() };
                g.append(&mut batch, &[e]).unwrap();
                store.write(&mut batch, true).unwrap();
            }
        }
        let file = log_file(dir.path());
        let clean = std::fs::read(&file).unwrap();
        let found = batches(&clean);
        let at = found.iter().position(|b| b.1 == 1).expect("a compressed batch");
        // The batch before it holds entry 5 (a plain entries block).
        let (plain, compressed) = (found[at - 1].0, found[at].0);
        assert_eq!(found[at - 1].1, 0);
        // Plain marked compressed: the check decompresses and names it.
        let mut bytes = clean.clone();
        bytes[plain + 7] = 1;
        std::fs::write(&file, &bytes).unwrap();
        let check = check_dir(dir.path()).unwrap();
        assert_eq!(check.damage.len(), 1, "{check:?}");
        assert_eq!(check.damage[0].offset as usize, plain, "{}", check.damage[0]);
        assert!(check.damage[0].problem.contains("marked LZ4-compressed"), "{}", check.damage[0]);
        // Compressed marked plain: its bytes are shorter than the entries
        // the batch index points to (raft-engine panicked slicing them).
        let mut bytes = clean.clone();
        bytes[compressed + 7] = 0;
        std::fs::write(&file, &bytes).unwrap();
        let check = check_dir(dir.path()).unwrap();
        assert_eq!(check.damage.len(), 1, "{check:?}");
        assert_eq!(check.damage[0].offset as usize, compressed, "{}", check.damage[0]);
        assert!(check.damage[0].problem.contains("marked plain"), "{}", check.damage[0]);
        // Undamaged, every entry reads back.
        std::fs::write(&file, &clean).unwrap();
        assert!(check_dir(dir.path()).unwrap().damage.is_empty());
        let store = LogStore::open(dir.path()).unwrap();
        store.group(7).unwrap().check_readable().unwrap();
    }

    #[test]
    fn a_cut_last_record_is_a_torn_tail_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 20);
        let file = log_file(dir.path());
        let clean = std::fs::read(&file).unwrap();
        let end = clean.iter().rposition(|&b| b != 0).unwrap() + 1;
        std::fs::write(&file, &clean[..end - 100]).unwrap();
        let check = check_dir(dir.path()).unwrap();
        assert!(check.damage.is_empty(), "{check:?}");
        assert_eq!(check.torn.len(), 1, "{check:?}");
    }

    #[test]
    fn a_missing_middle_file_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [1u64, 2, 4] {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&2u64.to_be_bytes());
            bytes.extend_from_slice(&0u64.to_be_bytes());
            std::fs::write(dir.path().join(format!("{seq:016}.raftlog")), bytes).unwrap();
        }
        let check = check_dir(dir.path()).unwrap();
        assert_eq!(check.damage.len(), 1, "{check:?}");
        assert!(check.damage[0].problem.contains("3..4"), "{check:?}");
    }

    #[test]
    fn zeros_behind_a_file_switch_are_a_torn_tail_only_when_no_later_file_holds_a_record() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 20);
        let file = log_file(dir.path());
        let records = std::fs::read(&file).unwrap();
        let end = records.iter().rposition(|&b| b != 0).unwrap() + 1;
        // The old file keeps 2 MiB of preallocated zeros; the next one was
        // created but its header never written.
        let mut padded = records[..end].to_vec();
        padded.resize(end + (2 << 20), 0);
        std::fs::write(&file, &padded).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let seq: u64 = name[..16].parse().unwrap();
        let next = dir.path().join(format!("{:016}.raftlog", seq + 1));
        std::fs::write(&next, b"").unwrap();
        let check = check_dir(dir.path()).unwrap();
        assert!(check.damage.is_empty(), "{check:?}");
        assert_eq!(
            check.cuts,
            vec![TailCut::Truncate(file.clone(), end as u64), TailCut::Remove(next.clone())]
        );
        assert!(check.torn.iter().any(|t| t.file == file && t.offset == end as u64), "{check:?}");
        for cut in &check.cuts {
            cut.apply().unwrap();
        }
        let check = check_dir(dir.path()).unwrap();
        assert!(check.damage.is_empty() && check.torn.is_empty() && check.cuts.is_empty(), "{check:?}");
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(raft::Storage::last_index(&store.group(7).unwrap()).unwrap(), 20);
        drop(store);

        // Zeros behind the records of a file that a file with records
        // follows: damage, nothing cut.
        std::fs::write(&file, &padded).unwrap();
        let later = dir.path().join(format!("{:016}.raftlog", seq + 1));
        // The same records, signed with the later file's number.
        let mut resigned = records[..end].to_vec();
        let mut at = parse_header(&resigned).unwrap().0;
        while at < end {
            let len = (be_u64(&resigned[at..]) >> 8) as usize;
            let sum = at + len - CHECKSUM_LEN;
            let signed = le_u32(&resigned[sum..]) ^ seq as u32 ^ (seq + 1) as u32;
            resigned[sum..sum + CHECKSUM_LEN].copy_from_slice(&signed.to_le_bytes());
            at += len;
        }
        std::fs::write(&later, &resigned).unwrap();
        let check = check_dir(dir.path()).unwrap();
        assert!(check.cuts.is_empty(), "{check:?}");
        assert!(
            check.damage.iter().any(|d| d.file == file && d.problem.contains("later files with records")),
            "{check:?}"
        );
    }
}
