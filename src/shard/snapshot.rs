//! Snapshot files: a whole shard in one columnar file.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header   "COHORTSN"  version:u32  shard:u32  sections:u32  header_crc:u32
//! section  kind:u32  name_len:u32  name  payload_len:u64  payload_crc:u32  payload
//! ...
//! footer   "COHORTND"  file_len:u64
//! ```
//!
//! Sections: `rows` (profile ids and universe), `first_seen`, `last_seen`,
//! `user_id`, `anonymous_id`, one `trait` section per trait, one `event`
//! section per event name, and one section per trait only ever unset.
//! Bitmaps are in roaring's portable format, columns are plain
//! little-endian arrays. Every section carries a CRC-32 of its payload; the
//! footer carries the file's length, so a truncated file is told apart from
//! a corrupt one.
//!
//! Version 2 stores each structure as its memory image, so that loading is
//! mostly copying arrays: the profile-row table and text indexes as their
//! slot arrays ([`RowTable`](super::row_table::RowTable)), text values as
//! `starts` plus the byte arena, dictionary codes in their packed width,
//! list traits as `starts` plus the code arena. What loading uses as an index
//! is bound-checked on the way in (codes below the dictionary's length, rows
//! below the row count, starts inside their arena, table slots holding
//! exactly the indexed rows), in passes over the arrays rather than per
//! element insertions. Hash-table images carry the hash of a fixed key: a
//! build whose hash function differs rebuilds the table instead. Version 1
//! files (values row by row, rebuilt on load) are still read.
//!
//! Writing goes to `<path>.tmp`, is fsynced, renamed over `<path>`, and the
//! directory is fsynced, so a crash leaves either the old or the new file.
//! Reading maps the file with memmap2 and decodes it; any inconsistency is a
//! [`ShardError::Corrupt`] naming the file, the byte offset and the problem,
//! never a panic and never a silently wrong shard.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use roaring::RoaringBitmap;

use super::columns::{
    BoolColumn, CodeSets, CodeVec, Dict, KeywordColumn, ListColumn, Stamp, Stamps, NO_CODE,
};
use super::events::{EventTable, Partition, PropColumn, DAY_MS, LEVEL_DAYS};
use super::range::RangeColumn;
use super::text::{append_value, text_hash_check, TextColumn};
use super::{profile_hash_check, ProfileRows, Row, Shard, ShardError, TraitColumn};
use crate::model::TraitType;

const MAGIC: &[u8; 8] = b"COHORTSN";
const FOOTER_MAGIC: &[u8; 8] = b"COHORTND";
/// The format version this code writes.
pub const VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const OLDEST_READABLE: u32 = 1;

const SEC_ROWS: u32 = 1;
const SEC_FIRST_SEEN: u32 = 2;
const SEC_LAST_SEEN: u32 = 3;
const SEC_USER_ID: u32 = 4;
const SEC_ANON_ID: u32 = 5;
const SEC_TRAIT: u32 = 6;
const SEC_EVENT: u32 = 7;
const SEC_UNSET_ONLY: u32 = 8;
const SEC_EXTRA: u32 = 9;

// ----- encoding --------------------------------------------------------------

#[derive(Default)]
struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// A length-prefixed array of fixed-width little-endian values.
    fn ints<T: Copy, const N: usize>(&mut self, v: &[T], le: fn(T) -> [u8; N]) {
        self.len(v.len());
        self.buf.reserve(v.len() * N);
        for x in v {
            self.buf.extend_from_slice(&le(*x));
        }
    }
    fn u16s(&mut self, v: &[u16]) {
        self.ints(v, u16::to_le_bytes);
    }
    fn u32s(&mut self, v: &[u32]) {
        self.ints(v, u32::to_le_bytes);
    }
    fn u64s(&mut self, v: &[u64]) {
        self.ints(v, u64::to_le_bytes);
    }
    fn i64s(&mut self, v: &[i64]) {
        self.ints(v, i64::to_le_bytes);
    }
    fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.buf.extend_from_slice(v);
    }
    fn bitmap(&mut self, b: &RoaringBitmap) {
        self.len(b.serialized_size());
        // Writing into a Vec cannot fail.
        let _ = b.serialize_into(&mut self.buf);
    }
    fn dict(&mut self, d: &Dict) {
        self.len(d.len());
        for v in d.values() {
            self.str(v);
        }
    }
    fn stamps(&mut self, s: &Stamps) {
        let (written, own) = s.parts();
        self.bitmap(written);
        let rows: Vec<u32> = own.iter().map(|(r, _)| *r).collect();
        let stamps: Vec<Stamp> = own.iter().map(|(_, t)| *t).collect();
        self.u32s(&rows);
        self.stamp_list(&stamps);
    }
    fn stamp_list(&mut self, stamps: &[Stamp]) {
        let times: Vec<i64> = stamps.iter().map(|t| t.0).collect();
        let seqs: Vec<u64> = stamps.iter().map(|t| t.1).collect();
        self.i64s(&times);
        self.u64s(&seqs);
    }
    /// Codes in their packed width: the width in bytes, then the array.
    fn code_vec(&mut self, v: &CodeVec) {
        match v {
            CodeVec::U8(codes) => {
                self.u8(1);
                self.bytes(codes);
            }
            CodeVec::U16(codes) => {
                self.u8(2);
                self.u16s(codes);
            }
            CodeVec::U32(codes) => {
                self.u8(4);
                self.u32s(codes);
            }
        }
    }
    fn code_lists(&mut self, rows: &[Option<Box<[u32]>>]) {
        self.len(rows.len());
        for r in rows {
            match r {
                None => self.u8(0),
                Some(codes) => {
                    self.u8(1);
                    self.u32s(codes);
                }
            }
        }
    }
    fn range(&mut self, c: &RangeColumn) {
        self.u64s(&c.keys);
        self.bitmap(&c.present);
        self.stamps(&c.stamps);
        self.u64s(&c.bounds);
        self.len(c.cum.len());
        for b in &c.cum {
            self.bitmap(b);
        }
        self.u64s(&c.bin_rows);
        self.len(c.pure.len());
        for p in &c.pure {
            match p {
                None => self.u8(0),
                Some(k) => {
                    self.u8(1);
                    self.u64(*k);
                }
            }
        }
    }
    fn text(&mut self, c: &TextColumn) {
        let image = c.image();
        self.u32s(&image.starts);
        self.bytes(&image.arena);
        self.u64(text_hash_check());
        self.u32s(image.index);
        let rows: Vec<Row> = image.extra.iter().map(|(r, _)| *r).collect();
        self.u32s(&rows);
        for (_, v) in &image.extra {
            self.str(v);
        }
        self.stamps(&c.stamps);
    }
    fn trait_column(&mut self, col: &TraitColumn) {
        self.u8(col.trait_type().tag());
        match col {
            TraitColumn::Keyword(c) => {
                self.dict(&c.dict);
                self.code_vec(&c.codes);
                self.len(c.bitmaps.len());
                for b in &c.bitmaps {
                    self.bitmap(b);
                }
                self.bitmap(&c.present);
                self.stamps(&c.stamps);
            }
            TraitColumn::Text(c) => self.text(c),
            TraitColumn::Range(_, c) => self.range(c),
            TraitColumn::Bool(c) => {
                self.bitmap(&c.trues);
                self.bitmap(&c.falses);
                self.stamps(&c.stamps);
            }
            TraitColumn::List(c) => {
                self.dict(&c.dict);
                let (starts, arena) = c.rows.image();
                self.u32s(&starts);
                self.u32s(&arena);
                self.len(c.bitmaps.len());
                for b in &c.bitmaps {
                    self.bitmap(b);
                }
                self.stamps(&c.stamps);
            }
        }
    }
    fn event_table(&mut self, t: &EventTable) {
        // A file holds no staged rows: a table with some is written as if
        // flushed. The node flushes before its snapshots, so this copy is
        // only made for shards built and written directly.
        let flushed;
        let t = if t.has_staged() {
            let mut copy = t.clone();
            copy.flush_who();
            flushed = copy;
            &flushed
        } else {
            t
        };
        self.len(t.props.len());
        for ((name, ty), dict) in t.props.iter().zip(&t.dicts) {
            self.str(name);
            self.u8(ty.tag());
            self.dict(dict);
        }
        self.len(t.partitions.len());
        for (day, p) in &t.partitions {
            self.u64(*day as u64);
            self.u32s(&p.rows);
            self.u32s(&p.offsets);
            self.len(p.props.len());
            for col in &p.props {
                match col {
                    PropColumn::Codes(v) => self.code_vec(v),
                    PropColumn::Keys { keys, present } => {
                        self.u64s(keys);
                        self.u64s(present);
                    }
                    PropColumn::Bools(v) => self.bytes(v),
                    PropColumn::Lists(v) => self.code_lists(v),
                }
            }
            self.bitmap(&p.who);
        }
        for level in &t.levels {
            self.len(level.len());
            for (bucket, b) in level {
                self.u64(*bucket as u64);
                self.bitmap(b);
            }
        }
        self.bitmap(&t.who);
        self.u64(t.total);
    }
}

/// Writes `shard` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory.
pub fn write(shard: &Shard, path: &Path) -> Result<(), ShardError> {
    write_with_extra(shard, path, &[])
}

/// Like [`write`], with `extra`: opaque bytes of the layer above (the
/// replication layer keeps its applied index there), written in the same
/// file so that they cannot disagree with the shard after a crash.
/// A write that fails (a full disk) removes its temporary file, so that it
/// holds no space and the file at `path` stays as it was.
pub fn write_with_extra(shard: &Shard, path: &Path, extra: &[u8]) -> Result<(), ShardError> {
    let tmp = path.with_extension("tmp");
    let written = write_file(shard, path, &tmp, extra);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_file(shard: &Shard, path: &Path, tmp: &Path, extra: &[u8]) -> Result<(), ShardError> {
    let io = |source: std::io::Error| ShardError::Io { path: path.display().to_string(), source };
    let file = File::create(tmp).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);

    let mut sections: Vec<(u32, String, Enc)> = Vec::new();
    let mut rows = Enc::default();
    rows.u64s(shard.rows.profiles());
    rows.bitmap(&shard.universe);
    rows.stamp_list(&shard.base_stamps);
    rows.u64(profile_hash_check());
    rows.u32s(shard.rows.table_image());
    sections.push((SEC_ROWS, String::new(), rows));
    for (kind, col) in [(SEC_FIRST_SEEN, &shard.first_seen), (SEC_LAST_SEEN, &shard.last_seen)] {
        let mut e = Enc::default();
        e.range(col);
        sections.push((kind, String::new(), e));
    }
    for (kind, col) in [(SEC_USER_ID, &shard.ids.user_ids), (SEC_ANON_ID, &shard.ids.anonymous_ids)] {
        let mut e = Enc::default();
        e.text(col);
        sections.push((kind, String::new(), e));
    }
    for (name, col) in &shard.traits {
        let mut e = Enc::default();
        e.trait_column(col);
        sections.push((SEC_TRAIT, name.clone(), e));
    }
    for (name, table) in &shard.events {
        let mut e = Enc::default();
        e.event_table(table);
        sections.push((SEC_EVENT, name.clone(), e));
    }
    for (name, stamps) in &shard.unset_only {
        let mut e = Enc::default();
        e.stamps(stamps);
        sections.push((SEC_UNSET_ONLY, name.clone(), e));
    }
    if !extra.is_empty() {
        sections.push((SEC_EXTRA, String::new(), Enc { buf: extra.to_vec() }));
    }

    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&shard.id.to_le_bytes());
    header.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    w.write_all(&header).map_err(io)?;
    let mut written = header.len() as u64;
    for (kind, name, enc) in &sections {
        let mut head = Vec::with_capacity(20 + name.len());
        head.extend_from_slice(&kind.to_le_bytes());
        head.extend_from_slice(&(name.len() as u32).to_le_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&(enc.buf.len() as u64).to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(&enc.buf).to_le_bytes());
        w.write_all(&head).map_err(io)?;
        w.write_all(&enc.buf).map_err(io)?;
        written += (head.len() + enc.buf.len()) as u64;
    }
    w.write_all(FOOTER_MAGIC).map_err(io)?;
    written += 16;
    w.write_all(&written.to_le_bytes()).map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

// ----- decoding --------------------------------------------------------------

struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of `data[0]` in the file, for error messages.
    base: u64,
    path: &'a str,
    /// The file's format version.
    version: u32,
    /// The highest row an event partition names, checked against the row
    /// count once every section is read (events index per-row arrays).
    max_event_row: Option<Row>,
}

type R<T> = Result<T, ShardError>;

impl<'a> Dec<'a> {
    fn err(&self, problem: impl Into<String>) -> ShardError {
        self.err_at(self.pos, problem)
    }
    /// An error at position `at` of this decoder's data.
    fn err_at(&self, at: usize, problem: impl Into<String>) -> ShardError {
        ShardError::Corrupt {
            path: self.path.to_string(),
            offset: self.base + at as u64,
            problem: problem.into(),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!("{what}: needs {n} bytes, {} left", self.data.len() - self.pos))),
        }
    }
    fn u8(&mut self, what: &str) -> R<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> R<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> R<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length, bounded by what is left (each element takes at least
    /// `min_elem` bytes), so a corrupt length cannot ask for a huge allocation.
    fn len(&mut self, min_elem: usize, what: &str) -> R<usize> {
        let n = self.u64(what)?;
        let left = (self.data.len() - self.pos) as u64;
        if n.saturating_mul(min_elem as u64) > left {
            return Err(self.err(format!("{what}: length {n} exceeds the {left} bytes left")));
        }
        Ok(n as usize)
    }
    fn str(&mut self, what: &str) -> R<String> {
        self.str_ref(what).map(str::to_string)
    }
    /// A string borrowed from the data.
    fn str_ref(&mut self, what: &str) -> R<&'a str> {
        let n = self.len(1, what)?;
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| self.err(format!("{what}: not UTF-8")))
    }
    fn u16s(&mut self, what: &str) -> R<Vec<u16>> {
        let n = self.len(2, what)?;
        let b = self.take(n * 2, what)?;
        Ok(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }
    fn u32s(&mut self, what: &str) -> R<Vec<u32>> {
        let n = self.len(4, what)?;
        let b = self.take(n * 4, what)?;
        Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    /// Dictionary codes: version 1 stores them as `u32`s, version 2 in
    /// their packed width. Every code must be absent or below `dict_len`.
    fn code_vec(&mut self, dict_len: usize, what: &str) -> R<CodeVec> {
        let at = self.pos;
        let codes = if self.version == 1 {
            let codes = self.u32s(what)?;
            if let Some(i) = codes.iter().position(|&c| c != NO_CODE && c as usize >= dict_len) {
                return Err(self.err_at(
                    at,
                    format!("{what}: code {} of entry {i} outside the dictionary of {dict_len}", codes[i]),
                ));
            }
            return Ok(CodeVec::from_u32s(&codes));
        } else {
            match self.u8(what)? {
                1 => CodeVec::U8(self.bytes(what)?),
                2 => CodeVec::U16(self.u16s(what)?),
                4 => CodeVec::U32(self.u32s(what)?),
                w => return Err(self.err_at(at, format!("{what}: code width {w}"))),
            }
        };
        match codes.first_code_outside(dict_len) {
            Some((i, c)) => Err(self
                .err_at(at, format!("{what}: code {c} of entry {i} outside the dictionary of {dict_len}"))),
            None => Ok(codes),
        }
    }
    fn u64s(&mut self, what: &str) -> R<Vec<u64>> {
        let n = self.len(8, what)?;
        let b = self.take(n * 8, what)?;
        Ok(b.chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect())
    }
    fn bytes(&mut self, what: &str) -> R<Vec<u8>> {
        let n = self.len(1, what)?;
        Ok(self.take(n, what)?.to_vec())
    }
    fn bitmap(&mut self, what: &str) -> R<RoaringBitmap> {
        let n = self.len(1, what)?;
        let at = self.pos;
        let b = self.take(n, what)?;
        RoaringBitmap::deserialize_from(b).map_err(|e| ShardError::Corrupt {
            path: self.path.to_string(),
            offset: self.base + at as u64,
            problem: format!("{what}: bad bitmap: {e}"),
        })
    }
    fn dict(&mut self, what: &str) -> R<Dict> {
        let n = self.len(8, what)?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(self.str(what)?.into_boxed_str());
        }
        Ok(Dict::from_values(values))
    }
    fn stamps(&mut self, what: &str) -> R<Stamps> {
        let written = self.bitmap(what)?;
        let rows = self.u32s(what)?;
        let stamps = self.stamp_list(what)?;
        if rows.len() != stamps.len() {
            return Err(self.err(format!("{what}: {} stamp rows but {} stamps", rows.len(), stamps.len())));
        }
        Ok(Stamps::from_parts(written, rows.into_iter().zip(stamps)))
    }
    /// Stamps stored as an array of times then an array of seqs, zipped
    /// straight from the bytes into one vector.
    fn stamp_list(&mut self, what: &str) -> R<Vec<Stamp>> {
        let n = self.len(8, what)?;
        let times = self.take(n * 8, what)?;
        let m = self.len(8, what)?;
        if m != n {
            return Err(self.err(format!("{what}: {n} times but {m} seqs")));
        }
        let seqs = self.take(m * 8, what)?;
        let word = |c: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        };
        Ok(times.chunks_exact(8).zip(seqs.chunks_exact(8)).map(|(t, s)| (word(t) as i64, word(s))).collect())
    }
    fn ty(&mut self, what: &str) -> R<TraitType> {
        let tag = self.u8(what)?;
        TraitType::from_tag(tag).ok_or_else(|| self.err(format!("{what}: unknown type tag {tag}")))
    }
    fn code_lists(&mut self, dict_len: usize, what: &str) -> R<Vec<Option<Box<[u32]>>>> {
        let n = self.len(1, what)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8(what)? {
                0 => None,
                1 => {
                    let codes = self.u32s(what)?;
                    if codes.iter().any(|&c| c as usize >= dict_len) {
                        return Err(self.err(format!("{what}: code outside the dictionary")));
                    }
                    Some(codes.into_boxed_slice())
                }
                t => return Err(self.err(format!("{what}: bad option tag {t}"))),
            });
        }
        Ok(out)
    }
    fn bitmaps(&mut self, what: &str) -> R<Vec<RoaringBitmap>> {
        let n = self.len(8, what)?;
        (0..n).map(|_| self.bitmap(what)).collect()
    }
    /// Fails unless every row of `b` indexes a vector of length `len`.
    fn rows_within(&self, b: &RoaringBitmap, len: usize, what: &str) -> R<()> {
        match b.max() {
            Some(m) if m as usize >= len => {
                Err(self.err(format!("{what}: row {m} beyond the {len} rows stored")))
            }
            _ => Ok(()),
        }
    }
    fn range(&mut self, what: &str) -> R<RangeColumn> {
        let keys = self.u64s(what)?;
        let present = self.bitmap(what)?;
        self.rows_within(&present, keys.len(), what)?;
        let stamps = self.stamps(what)?;
        let bounds = self.u64s(what)?;
        let cum = self.bitmaps(what)?;
        let bin_rows = self.u64s(what)?;
        let n = self.len(1, what)?;
        let mut pure = Vec::with_capacity(n);
        for _ in 0..n {
            pure.push(match self.u8(what)? {
                0 => None,
                1 => Some(self.u64(what)?),
                t => return Err(self.err(format!("{what}: bad option tag {t}"))),
            });
        }
        if let Some(b) = cum.iter().find(|b| b.max().is_some_and(|m| m as usize >= keys.len())) {
            return Err(self.err(format!(
                "{what}: a bin holds row {:?} beyond the {} keys",
                b.max(),
                keys.len()
            )));
        }
        let shape_ok = cum.len() == bounds.len()
            && pure.len() == bin_rows.len()
            && (bin_rows.is_empty() || bin_rows.len() == bounds.len() + 1)
            && bounds.windows(2).all(|w| w[0] < w[1]);
        if !shape_ok {
            return Err(self.err(format!("{what}: range index shape is inconsistent")));
        }
        Ok(RangeColumn::from_parts(keys, present, stamps, bounds, cum, bin_rows, pure))
    }
    fn text(&mut self, what: &str) -> R<TextColumn> {
        let at = self.pos;
        let (starts, arena, index, extra) = if self.version == 1 {
            // Values row by row: the first goes to the arena, the others
            // are further values; the index is rebuilt.
            let n = self.len(8, what)?;
            let mut starts = Vec::with_capacity(n);
            let mut arena = Vec::new();
            let mut extra = Vec::new();
            for row in 0..n as Row {
                let k = self.len(8, what)?;
                let mut start = 0;
                for j in 0..k {
                    let v = self.str_ref(what)?;
                    if j == 0 {
                        start = append_value(&mut arena, v, row);
                    } else {
                        extra.push((row, v.to_string()));
                    }
                }
                starts.push(start);
            }
            (starts, arena, None, extra)
        } else {
            let starts = self.u32s(what)?;
            let arena = self.bytes(what)?;
            let check = self.u64(what)?;
            let slots = self.u32s(what)?;
            // An index laid out by another hash function is rebuilt.
            let index = (check == text_hash_check()).then_some(slots);
            let rows = self.u32s(what)?;
            let mut extra = Vec::with_capacity(rows.len());
            for row in rows {
                extra.push((row, self.str(what)?));
            }
            (starts, arena, index, extra)
        };
        let stamps = self.stamps(what)?;
        TextColumn::from_image(starts, arena, index, extra, stamps)
            .map_err(|e| self.err_at(at, format!("{what}: {e}")))
    }
    fn trait_column(&mut self, what: &str) -> R<TraitColumn> {
        let ty = self.ty(what)?;
        Ok(match ty {
            TraitType::Keyword => {
                let dict = self.dict(what)?;
                let codes = self.code_vec(dict.len(), what)?;
                let bitmaps = self.bitmaps(what)?;
                if bitmaps.len() != dict.len() {
                    return Err(self.err(format!(
                        "{what}: {} bitmaps for {} dictionary values",
                        bitmaps.len(),
                        dict.len()
                    )));
                }
                let present = self.bitmap(what)?;
                self.rows_within(&present, codes.len(), what)?;
                let stamps = self.stamps(what)?;
                TraitColumn::Keyword(KeywordColumn { dict, codes, bitmaps, present, stamps })
            }
            TraitType::Text => TraitColumn::Text(self.text(what)?),
            TraitType::Number | TraitType::Timestamp => TraitColumn::Range(ty, self.range(what)?),
            TraitType::Bool => {
                let trues = self.bitmap(what)?;
                let falses = self.bitmap(what)?;
                let stamps = self.stamps(what)?;
                TraitColumn::Bool(BoolColumn { trues, falses, stamps })
            }
            TraitType::List => {
                let dict = self.dict(what)?;
                let at = self.pos;
                let (starts, arena) = if self.version == 1 {
                    let rows = self.code_lists(dict.len(), what)?;
                    let mut starts = Vec::with_capacity(rows.len());
                    let mut arena = Vec::new();
                    for codes in &rows {
                        starts.push(match codes {
                            None => 0,
                            Some(codes) => {
                                let start = u32::try_from(arena.len() + 1)
                                    .map_err(|_| self.err(format!("{what}: list arena over 4 Gi codes")))?;
                                arena.push(codes.len() as u32);
                                arena.extend_from_slice(codes);
                                start
                            }
                        });
                    }
                    (starts, arena)
                } else {
                    (self.u32s(what)?, self.u32s(what)?)
                };
                let (sets, present) = CodeSets::from_image(starts, arena, dict.len())
                    .map_err(|e| self.err_at(at, format!("{what}: {e}")))?;
                let bitmaps = self.bitmaps(what)?;
                if bitmaps.len() < dict.len() {
                    return Err(self.err(format!("{what}: fewer bitmaps than dictionary values")));
                }
                if self.version == 1 {
                    let stored = self.bitmap(what)?;
                    if stored != present {
                        return Err(self.err(format!("{what}: presence differs from the rows with a list")));
                    }
                }
                let stamps = self.stamps(what)?;
                TraitColumn::List(ListColumn { dict, rows: sets, bitmaps, present, stamps })
            }
        })
    }
    fn event_table(&mut self, what: &str) -> R<EventTable> {
        let mut t = EventTable::default();
        let n = self.len(8, what)?;
        for i in 0..n {
            let name = self.str(what)?;
            let ty = self.ty(what)?;
            let dict = self.dict(what)?;
            t.prop_index.insert(name.clone(), i);
            t.props.push((name, ty));
            t.dicts.push(dict);
        }
        let parts = self.len(8, what)?;
        for _ in 0..parts {
            let at = self.pos;
            let day = self.u64(what)? as i64;
            // Event times are `day * DAY_MS + offset` with the offset inside
            // the day: a day whose times do not fit an i64 cannot have been
            // written.
            if day.checked_mul(DAY_MS).and_then(|start| start.checked_add(DAY_MS - 1)).is_none() {
                return Err(self.err_at(at, format!("{what}: day {day} is outside the range of times")));
            }
            let rows = self.u32s(what)?;
            let max_row = rows.iter().copied().fold(0, Row::max);
            if !rows.is_empty() {
                self.max_event_row = self.max_event_row.max(Some(max_row));
            }
            let at = self.pos;
            let offsets = self.u32s(what)?;
            if offsets.iter().copied().fold(0, u32::max) as i64 >= DAY_MS {
                return Err(self.err_at(at, format!("{what}: day {day}: an offset is outside the day")));
            }
            let len = rows.len();
            let columns = self.len(8, what)?;
            if columns > t.props.len() {
                return Err(self
                    .err(format!("{what}: day {day}: {columns} columns for {} properties", t.props.len())));
            }
            let mut props = Vec::with_capacity(columns);
            for (i, (_, ty)) in t.props.iter().enumerate().take(columns) {
                let dict_len = t.dicts[i].len();
                let col = match ty {
                    TraitType::Keyword | TraitType::Text => PropColumn::Codes(self.code_vec(dict_len, what)?),
                    TraitType::Number | TraitType::Timestamp => {
                        let keys = self.u64s(what)?;
                        let present = self.u64s(what)?;
                        if present.len() != keys.len().div_ceil(64) {
                            return Err(self.err(format!("{what}: presence mask of the wrong length")));
                        }
                        PropColumn::Keys { keys, present }
                    }
                    TraitType::Bool => PropColumn::Bools(self.bytes(what)?),
                    TraitType::List => PropColumn::Lists(self.code_lists(dict_len, what)?),
                };
                let col_len = match &col {
                    PropColumn::Codes(v) => v.len(),
                    PropColumn::Keys { keys, .. } => keys.len(),
                    PropColumn::Bools(v) => v.len(),
                    PropColumn::Lists(v) => v.len(),
                };
                if col_len != len {
                    return Err(
                        self.err(format!("{what}: day {day}: a column has {col_len} events, rows {len}"))
                    );
                }
                props.push(col);
            }
            if offsets.len() != len {
                return Err(self.err(format!("{what}: day {day}: offsets and rows differ in length")));
            }
            let who = self.bitmap(what)?;
            t.partitions.insert(day, Partition { rows, offsets, props, who });
        }
        for level in 0..LEVEL_DAYS.len() {
            let n = self.len(8, what)?;
            let mut map = BTreeMap::new();
            for _ in 0..n {
                let bucket = self.u64(what)? as i64;
                map.insert(bucket, self.bitmap(what)?);
            }
            t.levels[level] = map;
        }
        t.who = self.bitmap(what)?;
        t.total = self.u64(what)?;
        Ok(t)
    }
}

/// Opens a snapshot file with memmap2 and decodes it into a shard.
pub fn read(path: &Path) -> Result<Shard, ShardError> {
    read_with_extra(path).map(|(shard, _)| shard)
}

/// Like [`read`], also returning the bytes given to [`write_with_extra`]
/// (empty when none).
pub fn read_with_extra(path: &Path) -> Result<(Shard, Vec<u8>), ShardError> {
    let shown = path.display().to_string();
    let io = |source: std::io::Error| ShardError::Io { path: shown.clone(), source };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < 24 + 16 {
        return Err(ShardError::Corrupt {
            path: shown,
            offset: len,
            problem: format!("truncated: {len} bytes is shorter than header and footer"),
        });
    }
    // SAFETY: the file is opened read-only and is only ever replaced by
    // rename, never written in place, so the mapping does not change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    decode_with_extra(&map, &shown)
}

/// Decodes a snapshot held in memory (`path` only names it in errors).
pub fn decode(data: &[u8], path: &str) -> Result<Shard, ShardError> {
    decode_with_extra(data, path).map(|(shard, _)| shard)
}

/// Like [`decode`], also returning the extra bytes.
pub fn decode_with_extra(data: &[u8], path: &str) -> Result<(Shard, Vec<u8>), ShardError> {
    let corrupt =
        |offset: u64, problem: String| ShardError::Corrupt { path: path.to_string(), offset, problem };
    let mut d = Dec { data, pos: 0, base: 0, path, version: VERSION, max_event_row: None };
    let magic = d.take(8, "header")?;
    if magic != MAGIC {
        return Err(corrupt(0, "not a Cohort shard snapshot (bad magic)".to_string()));
    }
    let version = d.u32("header")?;
    let shard_id = d.u32("header")?;
    let sections = d.u32("header")?;
    let crc = d.u32("header")?;
    if crc != crc32fast::hash(&data[..20]) {
        return Err(corrupt(20, "header checksum mismatch".to_string()));
    }
    if !(OLDEST_READABLE..=VERSION).contains(&version) {
        return Err(corrupt(
            8,
            format!("format version {version}, this build reads {OLDEST_READABLE} to {VERSION}"),
        ));
    }
    // The footer tells a truncated file from a corrupt one.
    let footer_at = data.len() - 16;
    let declared = u64::from_le_bytes(data[data.len() - 8..].try_into().unwrap_or([0; 8]));
    if &data[footer_at..footer_at + 8] != FOOTER_MAGIC || declared != data.len() as u64 {
        return Err(corrupt(
            data.len() as u64,
            format!(
                "truncated or extended: footer missing or does not match the {} bytes present",
                data.len()
            ),
        ));
    }
    let body = &data[..footer_at];
    let mut d = Dec { data: body, pos: d.pos, base: 0, path, version, max_event_row: None };
    let mut max_event_row = None;
    let mut shard = Shard::new(shard_id);
    let mut extra = Vec::new();
    let mut seen_rows = false;
    for _ in 0..sections {
        let at = d.pos as u64;
        let kind = d.u32("section header")?;
        let name_len = d.u32("section header")? as usize;
        let name_bytes = d.take(name_len, "section name")?;
        let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| d.err("section name: not UTF-8"))?;
        let payload_len = d.u64("section header")?;
        let crc = d.u32("section header")?;
        let payload_at = d.pos as u64;
        let payload = d.take(
            usize::try_from(payload_len).map_err(|_| d.err("section length overflows"))?,
            "section payload",
        )?;
        if crc32fast::hash(payload) != crc {
            return Err(corrupt(at, format!("checksum mismatch in section {kind} {name:?}")));
        }
        let mut p = Dec { data: payload, pos: 0, base: payload_at, path, version, max_event_row: None };
        match kind {
            SEC_ROWS => {
                let profiles = p.u64s("rows")?;
                shard.universe = p.bitmap("rows")?;
                p.rows_within(&shard.universe, profiles.len(), "rows")?;
                shard.base_stamps = p.stamp_list("rows")?;
                shard.rows = if version == 1 {
                    ProfileRows::from_parts(profiles, &shard.universe)
                } else {
                    let check = p.u64("rows")?;
                    let at = p.pos;
                    let slots = p.u32s("rows")?;
                    if check == profile_hash_check() {
                        ProfileRows::from_image(profiles, slots, &shard.universe)
                            .map_err(|e| p.err_at(at, format!("rows: {e}")))?
                    } else {
                        // Laid out by another hash function: rebuilt.
                        ProfileRows::from_parts(profiles, &shard.universe)
                    }
                };
                seen_rows = true;
            }
            SEC_FIRST_SEEN => shard.first_seen = p.range("first_seen")?,
            SEC_LAST_SEEN => shard.last_seen = p.range("last_seen")?,
            SEC_USER_ID => shard.ids.user_ids = p.text("user_id")?,
            SEC_ANON_ID => shard.ids.anonymous_ids = p.text("anonymous_id")?,
            SEC_TRAIT => {
                let col = p.trait_column(&format!("trait {name:?}"))?;
                shard.traits.insert(name.clone(), col);
            }
            SEC_EVENT => {
                let table = p.event_table(&format!("event {name:?}"))?;
                shard.events.insert(name.clone(), table);
            }
            SEC_UNSET_ONLY => {
                let stamps = p.stamps(&format!("unset trait {name:?}"))?;
                shard.unset_only.insert(name.clone(), stamps);
            }
            SEC_EXTRA => {
                extra = payload.to_vec();
                p.pos = payload.len();
            }
            other => return Err(corrupt(at, format!("unknown section kind {other}"))),
        }
        if p.pos != payload.len() {
            return Err(p.err(format!("section {name:?}: {} unread bytes", payload.len() - p.pos)));
        }
        max_event_row = max_event_row.max(p.max_event_row);
    }
    if d.pos != body.len() {
        return Err(d.err(format!("{} bytes after the last section", body.len() - d.pos)));
    }
    if !seen_rows {
        return Err(corrupt(0, "no rows section".to_string()));
    }
    let row_count = shard.rows.profiles().len();
    if let Some(row) = max_event_row.filter(|&r| r as usize >= row_count) {
        return Err(corrupt(0, format!("an event names row {row}, beyond the {row_count} rows")));
    }
    Ok((shard, extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdentifierKind, Value};
    use crate::shard::{Command, EventWrite, ProfileWrite};

    fn sample() -> Shard {
        let mut s = Shard::new(7);
        let mut batch = Vec::new();
        for p in 0..300u64 {
            let mut identifiers = vec![(IdentifierKind::UserId, format!("u{p}"))];
            if p % 10 == 0 {
                // Several anonymous ids: further values of a text column.
                identifiers.push((IdentifierKind::AnonymousId, format!("a{p}")));
                identifiers.push((IdentifierKind::AnonymousId, format!("b{p}")));
            }
            batch.push(Command::Write(ProfileWrite {
                profile: p,
                time_ms: 1_000 + p as i64,
                seq: p,
                identifiers,
                traits: vec![
                    ("country".into(), Some(Value::Keyword(["FR", "DE", "US"][p as usize % 3].into()))),
                    ("city".into(), Some(Value::Keyword(format!("c{}", p % 280)))),
                    ("age".into(), Some(Value::Number((p % 50) as f64))),
                    ("vip".into(), Some(Value::Bool(p % 2 == 0))),
                    ("email".into(), Some(Value::Text(format!("{p}@x")))),
                    ("tags".into(), Some(Value::list(vec!["a".into(), format!("t{}", p % 4)]))),
                    ("gone".into(), None),
                ],
                add_to_lists: vec![],
                event: Some(EventWrite {
                    name: "purchase".into(),
                    properties: vec![
                        ("amount".into(), Value::Number(p as f64)),
                        ("sku".into(), Value::Keyword(format!("s{}", p % 300))),
                        ("items".into(), Value::list(vec![format!("i{}", p % 3)])),
                        ("gift".into(), Value::Bool(p % 3 == 0)),
                    ],
                }),
            }));
        }
        // Later writes out of row order: the email arena holds garbage and
        // is no longer in row order; lists are replaced.
        for p in (0..300u64).rev().step_by(7) {
            batch.push(Command::Write(ProfileWrite {
                profile: p,
                time_ms: 5_000,
                seq: 1_000 + p,
                traits: vec![
                    ("email".into(), Some(Value::Text(format!("new-{p}@x")))),
                    ("tags".into(), Some(Value::list(vec![format!("t{}", p % 5)]))),
                    ("age".into(), None),
                ],
                ..ProfileWrite::default()
            }));
        }
        batch.push(Command::Remove { profile: 5 });
        batch.push(Command::Merge { into: 8, from: 9 });
        let out = s.apply(&batch);
        assert!(out.rejections.is_empty(), "{:?}", out.rejections);
        s
    }

    /// Every profile of `a` reads back the same from `b`, and the indexes
    /// answer alike.
    fn assert_same(a: &Shard, b: &Shard) {
        b.validate().unwrap();
        assert_eq!(a.universe, b.universe);
        assert_eq!(a.rows.profiles(), b.rows.profiles());
        for row in &a.universe {
            let p = a.rows.profile_of(row);
            assert_eq!(b.row_of(p), Some(row));
            assert_eq!(a.read_profile(p), b.read_profile(p), "profile {p}");
            for kind in [IdentifierKind::UserId, IdentifierKind::AnonymousId] {
                for id in a.ids.of(kind).values(row) {
                    assert_eq!(a.ids.of(kind).rows_of(id), b.ids.of(kind).rows_of(id), "{kind:?} {id}");
                }
            }
        }
        assert_eq!(a.memory_report().len(), b.memory_report().len());
    }

    /// `(kind, name, payload start, payload length)` of each section.
    fn sections(file: &[u8]) -> Vec<(u32, String, usize, usize)> {
        let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        let count = word(16) as usize;
        let mut at = 24;
        let mut out = Vec::new();
        for _ in 0..count {
            let kind = word(at);
            let name_len = word(at + 4) as usize;
            let name = String::from_utf8(file[at + 8..at + 8 + name_len].to_vec()).unwrap();
            let len_at = at + 8 + name_len;
            let len = u64::from_le_bytes(file[len_at..len_at + 8].try_into().unwrap()) as usize;
            out.push((kind, name, len_at + 12, len));
            at = len_at + 12 + len;
        }
        out
    }

    /// A copy of `file` where `patch` changed a section's payload, with the
    /// section's checksum recomputed: damage a checksum does not catch.
    fn patched(file: &[u8], kind: u32, name: &str, patch: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut out = file.to_vec();
        let (_, _, start, len) =
            sections(file).into_iter().find(|(k, n, _, _)| *k == kind && n == name).unwrap();
        patch(&mut out[start..start + len]);
        let crc = crc32fast::hash(&out[start..start + len]);
        out[start - 4..start].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn put_u32(payload: &mut [u8], at: usize, v: u32) {
        payload[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get_u64(payload: &[u8], at: usize) -> usize {
        u64::from_le_bytes(payload[at..at + 8].try_into().unwrap()) as usize
    }

    /// The offset just past the dictionary of a keyword or list trait
    /// section (type tag, value count, length-prefixed values).
    fn after_dictionary(payload: &[u8]) -> usize {
        let mut at = 1;
        let values = get_u64(payload, at);
        at += 8;
        for _ in 0..values {
            at += 8 + get_u64(payload, at);
        }
        at
    }

    #[test]
    fn round_trip_preserves_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.snap");
        let s = sample();
        write(&s, &path).unwrap();
        let back = read(&path).unwrap();
        back.validate().unwrap();
        assert_eq!(back.universe, s.universe);
        for p in [0u64, 1, 7, 299] {
            assert_eq!(back.read_profile(p), s.read_profile(p));
        }
        assert_eq!(back.read_profile(5), None);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn round_trip_of_a_round_trip_is_identical() {
        let first = encode(&sample());
        let again = encode(&decode(&first, "first").unwrap());
        assert_eq!(first, again, "a loaded shard writes the same image");
    }

    /// The bytes `write` puts in a file.
    fn encode(shard: &Shard) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.snap");
        write_with_extra(shard, &path, b"applied").unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn version_1_files_still_load() {
        // Written by the version 1 code: `cohort demo --profiles 10 --shards 1`.
        let v1 = include_bytes!("testdata/v1-demo-10-profiles.snap");
        assert_eq!(&v1[8..12], &1u32.to_le_bytes());
        let (old, _) = decode_with_extra(v1, "v1").unwrap();
        old.validate().unwrap();
        assert_eq!(old.len(), 10);
        assert!(old.traits.len() >= 9 && !old.events.is_empty());
        let v2 = encode(&old);
        assert_eq!(&v2[8..12], &VERSION.to_le_bytes());
        let (new, new_extra) = decode_with_extra(&v2, "v2").unwrap();
        assert_eq!(new_extra, b"applied");
        assert_same(&old, &new);
    }

    #[test]
    fn damage_behind_a_valid_checksum_is_named() {
        let good = encode(&sample());
        let check = |file: Vec<u8>, words: &[&str]| {
            let err = decode(&file, "shard.snap").unwrap_err().to_string();
            assert!(err.contains("shard.snap") && err.contains("at byte"), "{err}");
            for w in words {
                assert!(err.contains(w), "{err} lacks {w:?}");
            }
        };
        // user_id: the first array is `starts`; row 3's value moved.
        check(patched(&good, SEC_USER_ID, "", |p| put_u32(p, 8 + 3 * 4, 7)), &["user_id", "row 3"]);
        check(patched(&good, SEC_USER_ID, "", |p| put_u32(p, 8 + 3 * 4, u32::MAX)), &["user_id", "row 3"]);
        // The arena's length (after starts) cut short.
        check(
            patched(&good, SEC_USER_ID, "", |p| {
                let at = 8 + get_u64(p, 0) * 4;
                let n = get_u64(p, at);
                p[at..at + 8].copy_from_slice(&(n as u64 - 1).to_le_bytes());
            }),
            &["user_id"],
        );
        // rows: profiles, universe, times, seqs, hash check, then the table.
        let table_at = |p: &[u8]| {
            let mut at = 8 + get_u64(p, 0) * 8;
            at += 8 + get_u64(p, at);
            at += 8 + get_u64(p, at) * 8;
            at += 8 + get_u64(p, at) * 8;
            at + 8
        };
        let slot_of = |p: &[u8], want: u32| {
            let at = table_at(p);
            (0..get_u64(p, at))
                .map(|i| at + 8 + i * 4)
                .find(|&o| u32::from_le_bytes(p[o..o + 4].try_into().unwrap()) == want)
        };
        check(
            patched(&good, SEC_ROWS, "", |p| {
                let free = slot_of(p, u32::MAX).unwrap();
                put_u32(p, free, 0);
            }),
            &["rows", "row table holds row 0 twice"],
        );
        check(
            patched(&good, SEC_ROWS, "", |p| {
                let at = slot_of(p, 0).unwrap();
                put_u32(p, at, 5); // row 5 was removed
            }),
            &["rows", "row table"],
        );
        // A keyword code beyond its dictionary: type tag, dictionary, width.
        check(
            patched(&good, SEC_TRAIT, "country", |p| {
                let at = after_dictionary(p);
                assert_eq!(p[at], 1, "one-byte codes");
                p[at + 1 + 8 + 2] = 3;
            }),
            &["country", "code 3 of entry 2 outside the dictionary of 3"],
        );
        check(
            patched(&good, SEC_TRAIT, "country", |p| {
                let at = after_dictionary(p);
                p[at] = 3;
            }),
            &["country", "code width 3"],
        );
        // A list set out of order: tag, dictionary, starts, then the arena.
        check(
            patched(&good, SEC_TRAIT, "tags", |p| {
                let mut at = after_dictionary(p);
                at += 8 + get_u64(p, at) * 4;
                // Row 0's set [a, t0] = codes [0, 1]: swap them.
                let arena = at + 8;
                p[arena + 4..arena + 8].copy_from_slice(&1u32.to_le_bytes());
                p[arena + 8..arena + 12].copy_from_slice(&0u32.to_le_bytes());
            }),
            &["tags", "row 0", "sorted set"],
        );
        // An event naming a row the shard does not have.
        check(
            patched(&good, SEC_EVENT, "purchase", |p| {
                let mut at = 8;
                for _ in 0..get_u64(p, 0) {
                    at += 8 + get_u64(p, at) + 1;
                    let values = get_u64(p, at);
                    at += 8;
                    for _ in 0..values {
                        at += 8 + get_u64(p, at);
                    }
                }
                at += 8 + 8; // partitions, day
                put_u32(p, at + 8, 10_000);
            }),
            &["row 10000", "beyond the 300 rows"],
        );
    }

    #[test]
    fn tables_laid_out_by_another_hash_are_rebuilt() {
        let shard = sample();
        let good = encode(&shard);
        // user_id: starts, arena, then the hash check.
        let other_text_hash = patched(&good, SEC_USER_ID, "", |p| {
            let mut at = 8 + get_u64(p, 0) * 4;
            at += 8 + get_u64(p, at);
            p[at] ^= 1;
        });
        // rows: profiles, universe, times, seqs, then the hash check.
        let other_profile_hash = patched(&other_text_hash, SEC_ROWS, "", |p| {
            let mut at = 8 + get_u64(p, 0) * 8;
            at += 8 + get_u64(p, at);
            at += 8 + get_u64(p, at) * 8;
            at += 8 + get_u64(p, at) * 8;
            p[at] ^= 1;
        });
        assert_same(&shard, &decode(&other_profile_hash, "rebuilt").unwrap());
    }

    #[test]
    fn any_damaged_byte_gives_an_error_or_a_valid_shard_never_a_panic() {
        let good = encode(&sample());
        let all = sections(&good);
        let mut refused = 0;
        let mut step = 0usize;
        for (kind, name, start, len) in &all {
            // Every byte of small sections, a spread of the large ones.
            let stride = (len / 150).max(1);
            for at in (*start..start + len).step_by(stride) {
                step += 1;
                let flipped = patched(&good, *kind, name, |p| p[at - start] ^= 1 << (step % 8));
                match decode(&flipped, "shard.snap") {
                    Err(ShardError::Corrupt { .. }) => refused += 1,
                    Err(e) => panic!("byte {at}: {e}"),
                    // Damage that still makes a consistent shard (a stamp, a
                    // key, a profile id): its indexes must still check out
                    // or report, without panicking.
                    Ok(shard) => {
                        let _ = shard.validate();
                    }
                }
            }
        }
        assert!(refused > 100, "{refused} refusals");
    }

    #[test]
    fn truncation_and_corruption_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.snap");
        write(&sample(), &path).unwrap();
        let good = std::fs::read(&path).unwrap();

        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("shard.snap"), "{err}");

        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch") && err.contains("at byte"), "{err}");

        let mut bad = good.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("bad magic"));

        std::fs::write(&path, b"tiny").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("truncated"));
    }
}
