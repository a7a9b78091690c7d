//! Per-trait columns and their indexes, one struct per trait type.
//!
//! Every column keeps, per row, the value, the message time of the value
//! (for last-write-wins) and a presence bitmap, and maintains its index on
//! every write so that a query never sees a stale index:
//!
//! - [`KeywordColumn`]: dictionary codes per row plus one roaring bitmap per
//!   distinct value.
//! - [`ListColumn`]: a sorted set of dictionary codes per row plus one bitmap
//!   per element.
//! - [`BoolColumn`]: one bitmap for `true`, one for `false`.
//! - Text lives in [`TextColumn`](super::text::TextColumn): strings with a
//!   hash index for equality; no bitmaps.
//! - Numbers and timestamps live in [`RangeColumn`](super::range::RangeColumn).
//!
//! Invariant shared by all: an index holds only rows whose value is set, and
//! `present` is exactly the set of such rows. Removing a row clears it
//! everywhere, so every index is a subset of the shard's universe.

use std::borrow::Cow;

use ahash::AHashMap;
use roaring::RoaringBitmap;

use super::code_scan::{mask_eq_any_u16, mask_eq_any_u8, MAX_SCAN_CODES};

use super::Row;

/// Code of "no value" in a dictionary-coded column.
pub const NO_CODE: u32 = u32::MAX;

/// The last-write-wins stamp of a write: the message time in milliseconds,
/// then the message's position in ingestion order (`seq`), which breaks ties
/// of time: between two writes with the same time, the later ingested wins.
pub type Stamp = (i64, u64);

/// Stamp of a value never written: older than any message.
pub const NEVER: Stamp = (i64::MIN, 0);

/// Message times per row, for last-write-wins. A time is kept after a value
/// is unset by `null`, so that an older message arriving late cannot bring
/// the value back.
///
/// Stored against a per-row *base time* that the shard keeps (the time of
/// the row's first trait write): a column records only which rows it has a
/// time for and, for the rows whose time differs from the base, that time.
/// A message usually writes many traits at one time, so most rows cost no
/// more than a bit here instead of eight bytes per trait.
#[derive(Clone, Debug, Default)]
pub struct Stamps {
    written: RoaringBitmap,
    own: AHashMap<Row, Stamp>,
}

impl Stamps {
    /// The time of the row's current value (or of its unset), [`NEVER`] if
    /// it was never written.
    pub fn get(&self, row: Row, base: &[Stamp]) -> Stamp {
        if !self.written.contains(row) {
            return NEVER;
        }
        match self.own.get(&row) {
            Some(&t) => t,
            None => base.get(row as usize).copied().unwrap_or(NEVER),
        }
    }

    /// Records a write stamped `time` if it wins against the stored stamp:
    /// a later message time wins; on a tie of time the later ingested message
    /// (larger `seq`) wins, and on a full tie (the same message, or writes
    /// that carry no `seq`) the write applied now wins (INGEST.md). The row's
    /// base stamp is set by the first trait write to the row.
    pub fn admit(&mut self, row: Row, time: Stamp, base: &mut Vec<Stamp>) -> bool {
        if time < self.get(row, base) {
            return false;
        }
        let i = row as usize;
        if i >= base.len() {
            base.resize(i + 1, NEVER);
        }
        if base[i] == NEVER {
            base[i] = time;
        }
        self.written.insert(row);
        if time == base[i] {
            self.own.remove(&row);
        } else {
            self.own.insert(row, time);
        }
        true
    }

    /// Forgets the row's time (the row is removed).
    pub fn clear(&mut self, row: Row) {
        self.written.remove(row);
        self.own.remove(&row);
    }

    /// The rows with a time, and the times that differ from the base, sorted
    /// by row (for snapshots).
    pub fn parts(&self) -> (&RoaringBitmap, Vec<(Row, Stamp)>) {
        let mut own: Vec<(Row, Stamp)> = self.own.iter().map(|(r, t)| (*r, *t)).collect();
        own.sort_unstable();
        (&self.written, own)
    }

    /// Rebuilds from [`parts`](Self::parts).
    pub fn from_parts(written: RoaringBitmap, own: impl IntoIterator<Item = (Row, Stamp)>) -> Self {
        Stamps { written, own: own.into_iter().collect() }
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.written.serialized_size() + self.own.capacity() * 28
    }

    /// Gives back spare capacity.
    pub fn shrink_to_fit(&mut self) {
        self.own.shrink_to_fit();
    }
}

/// A set of rows being built in increasing or random order, as a plain bit
/// vector turned into a bitmap in one conversion at the end: what snapshot
/// loading uses instead of one bitmap insertion per row.
pub struct RowMarks {
    /// Bit `r % 8` of byte `r / 8` is row `r`.
    bytes: Vec<u8>,
}

impl RowMarks {
    /// No row marked, room for rows below `rows` (at most 2^32 - 8, which
    /// the caller checks: rows are `u32`).
    pub fn new(rows: usize) -> Self {
        RowMarks { bytes: vec![0; rows.div_ceil(8)] }
    }

    /// Marks `row` (below the `rows` given to [`new`](Self::new)); returns
    /// false when it was marked already.
    pub fn mark(&mut self, row: usize) -> bool {
        let bit = 1u8 << (row % 8);
        let byte = &mut self.bytes[row / 8];
        let fresh = *byte & bit == 0;
        *byte |= bit;
        fresh
    }

    /// The marked rows.
    pub fn into_bitmap(self) -> RoaringBitmap {
        RoaringBitmap::from_lsb0_bytes(0, &self.bytes)
    }
}

/// Walks the `starts` of a snapshot arena image (per row, 0 for none or 1 +
/// the entry's offset), checking that the entries follow each other in row
/// order and fill the arena exactly. `entry(row, pos)` checks the entry at
/// `pos` and returns the offset just past it; `what` names the entries in
/// errors ("set", "value"), `unit` the arena's elements ("codes", "bytes").
/// Returns the rows that have an entry.
pub fn walk_arena(
    starts: &[u32],
    arena_len: usize,
    what: &str,
    unit: &str,
    mut entry: impl FnMut(usize, usize) -> Result<usize, String>,
) -> Result<RoaringBitmap, String> {
    if starts.len() > u32::MAX as usize - 8 {
        return Err(format!("{} rows exceed the row ids", starts.len()));
    }
    let mut present = RowMarks::new(starts.len());
    let mut pos = 0usize;
    for (row, &start) in starts.iter().enumerate() {
        if start == 0 {
            continue;
        }
        if start as usize - 1 != pos {
            return Err(format!("row {row}: {what} at arena offset {}, expected {pos}", start - 1));
        }
        pos = entry(row, pos)?;
        present.mark(row);
    }
    if pos != arena_len {
        return Err(format!("{} arena {unit} after the last {what}", arena_len - pos));
    }
    Ok(present.into_bitmap())
}

/// A dictionary of strings to dense `u32` codes. Codes are never reused, so
/// a code stays valid for the life of the shard.
#[derive(Clone, Debug, Default)]
pub struct Dict {
    codes: AHashMap<Box<str>, u32>,
    values: Vec<Box<str>>,
}

impl Dict {
    /// The code of `value`, if it has one.
    pub fn code(&self, value: &str) -> Option<u32> {
        self.codes.get(value).copied()
    }

    /// The code of `value`, assigning the next one if it is new.
    pub fn intern(&mut self, value: &str) -> u32 {
        if let Some(c) = self.codes.get(value) {
            return *c;
        }
        let c = self.values.len() as u32;
        assert!(c != NO_CODE, "dictionary full: {} values", self.values.len());
        self.values.push(value.into());
        self.codes.insert(value.into(), c);
        c
    }

    /// The value of a code.
    pub fn value(&self, code: u32) -> &str {
        &self.values[code as usize]
    }

    /// Number of codes.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no code was ever assigned.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every value, by code.
    pub fn values(&self) -> &[Box<str>] {
        &self.values
    }

    /// Rebuilds from values listed by code.
    pub fn from_values(values: Vec<Box<str>>) -> Self {
        let codes = values.iter().enumerate().map(|(i, v)| (v.clone(), i as u32)).collect();
        Dict { codes, values }
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.values.iter().map(|v| v.len() * 2 + 40).sum::<usize>()
    }
}

/// Keeps `v[i]` where `keep[i]` is set, in order: how a partition's columns
/// drop the events of a removed row in step.
pub fn retain_marked<T>(v: &mut Vec<T>, keep: &[bool]) {
    debug_assert_eq!(v.len(), keep.len(), "one flag per entry");
    let mut flags = keep.iter();
    v.retain(|_| flags.next().copied().unwrap_or(false));
}

/// Dictionary codes in the narrowest width that holds them: one byte per
/// entry while the dictionary has fewer than 255 values, two below 65,535,
/// four beyond. The largest value of each width means "no value". A vector
/// widens itself when a larger code arrives.
#[derive(Clone, Debug)]
pub enum CodeVec {
    /// Codes below 255; 255 is absent.
    U8(Vec<u8>),
    /// Codes below 65,535; 65,535 is absent.
    U16(Vec<u16>),
    /// Any code; [`NO_CODE`] is absent.
    U32(Vec<u32>),
}

impl Default for CodeVec {
    fn default() -> Self {
        CodeVec::U8(Vec::new())
    }
}

impl CodeVec {
    /// `len` entries, all absent.
    pub fn absent(len: usize) -> Self {
        CodeVec::U8(vec![u8::MAX; len])
    }

    /// Rebuilds from plain codes ([`NO_CODE`] for absent), narrowest width.
    pub fn from_u32s(codes: &[u32]) -> Self {
        let mut v = CodeVec::absent(0);
        for &c in codes {
            v.push(c);
        }
        v
    }

    /// The codes as plain `u32`s ([`NO_CODE`] for absent).
    pub fn to_u32s(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            CodeVec::U8(v) => v.len(),
            CodeVec::U16(v) => v.len(),
            CodeVec::U32(v) => v.len(),
        }
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i`, [`NO_CODE`] when absent.
    pub fn get(&self, i: usize) -> u32 {
        match self {
            CodeVec::U8(v) => match v[i] {
                u8::MAX => NO_CODE,
                c => u32::from(c),
            },
            CodeVec::U16(v) => match v[i] {
                u16::MAX => NO_CODE,
                c => u32::from(c),
            },
            CodeVec::U32(v) => v[i],
        }
    }

    fn widen_for(&mut self, code: u32) {
        if code == NO_CODE {
            return;
        }
        let widen16 =
            |v: &Vec<u8>| v.iter().map(|&c| if c == u8::MAX { u16::MAX } else { u16::from(c) }).collect();
        match self {
            CodeVec::U8(v) if code >= u32::from(u8::MAX) => {
                if code < u32::from(u16::MAX) {
                    *self = CodeVec::U16(widen16(v));
                } else {
                    *self = CodeVec::U32(
                        v.iter().map(|&c| if c == u8::MAX { NO_CODE } else { u32::from(c) }).collect(),
                    );
                }
            }
            CodeVec::U16(v) if code >= u32::from(u16::MAX) => {
                *self = CodeVec::U32(
                    v.iter().map(|&c| if c == u16::MAX { NO_CODE } else { u32::from(c) }).collect(),
                );
            }
            _ => {}
        }
    }

    /// Appends a code ([`NO_CODE`] for absent).
    pub fn push(&mut self, code: u32) {
        self.widen_for(code);
        match self {
            CodeVec::U8(v) => v.push(if code == NO_CODE { u8::MAX } else { code as u8 }),
            CodeVec::U16(v) => v.push(if code == NO_CODE { u16::MAX } else { code as u16 }),
            CodeVec::U32(v) => v.push(code),
        }
    }

    /// Sets entry `i`, growing with absent entries as needed.
    pub fn set(&mut self, i: usize, code: u32) {
        while self.len() <= i {
            self.push(NO_CODE);
        }
        self.widen_for(code);
        match self {
            CodeVec::U8(v) => v[i] = if code == NO_CODE { u8::MAX } else { code as u8 },
            CodeVec::U16(v) => v[i] = if code == NO_CODE { u16::MAX } else { code as u16 },
            CodeVec::U32(v) => v[i] = code,
        }
    }

    /// Keeps the entries whose `keep` flag is set.
    pub fn retain(&mut self, keep: &[bool]) {
        match self {
            CodeVec::U8(v) => retain_marked(v, keep),
            CodeVec::U16(v) => retain_marked(v, keep),
            CodeVec::U32(v) => retain_marked(v, keep),
        }
    }

    /// The first entry that is neither absent nor below `dict_len`, as
    /// (index, code): what a snapshot reader refuses. One branch-free pass
    /// per width finds whether there is one.
    pub fn first_code_outside(&self, dict_len: usize) -> Option<(usize, u32)> {
        fn scan<T: Copy + Ord + Default + Into<u32>>(
            v: &[T],
            absent: T,
            dict_len: usize,
        ) -> Option<(usize, u32)> {
            let bad = |c: T| c != absent && c.into() as usize >= dict_len;
            // The largest present code, in a loop the compiler vectorises
            // (absent entries count as 0); only an empty dictionary needs
            // a second look at code 0.
            let max = v.iter().fold(T::default(), |m, &c| m.max(if c == absent { T::default() } else { c }));
            if (max.into() as usize) < dict_len {
                return None;
            }
            v.iter().position(|&c| bad(c)).map(|i| (i, v[i].into()))
        }
        match self {
            CodeVec::U8(v) => scan(v, u8::MAX, dict_len),
            CodeVec::U16(v) => scan(v, u16::MAX, dict_len),
            CodeVec::U32(v) => scan(v, NO_CODE, dict_len),
        }
    }

    /// Gives back spare capacity.
    pub fn shrink_to_fit(&mut self) {
        match self {
            CodeVec::U8(v) => v.shrink_to_fit(),
            CodeVec::U16(v) => v.shrink_to_fit(),
            CodeVec::U32(v) => v.shrink_to_fit(),
        }
    }

    /// A bit mask of the present entries whose code is one of `codes`, or
    /// with `negate`, of the present entries whose code is none of them.
    /// A few codes are compared 16 entries at a time
    /// ([`code_scan`](super::code_scan)); more go through
    /// [`mask_where`](Self::mask_where).
    pub fn mask_in(&self, codes: &[u32], negate: bool) -> Vec<u64> {
        /// The codes that fit below `absent`, sorted, with `absent` itself
        /// when absent entries are to be excluded from a negated mask.
        fn narrow<T: TryFrom<u32> + Ord + Copy>(codes: &[u32], absent: T, negate: bool) -> Vec<T> {
            let mut out: Vec<T> =
                codes.iter().filter_map(|&c| T::try_from(c).ok()).filter(|&c| c < absent).collect();
            out.sort_unstable();
            out.dedup();
            if negate {
                out.push(absent);
            }
            out
        }
        let scanned = match self {
            CodeVec::U8(v) => Some(narrow(codes, u8::MAX, negate))
                .filter(|n| n.len() <= MAX_SCAN_CODES)
                .map(|n| mask_eq_any_u8(v, &n)),
            CodeVec::U16(v) => Some(narrow(codes, u16::MAX, negate))
                .filter(|n| n.len() <= MAX_SCAN_CODES)
                .map(|n| mask_eq_any_u16(v, &n)),
            CodeVec::U32(_) => None,
        };
        match scanned {
            Some(mut mask) => {
                if negate {
                    for w in &mut mask {
                        *w = !*w;
                    }
                    if self.len() % 64 != 0 {
                        if let Some(last) = mask.last_mut() {
                            *last &= (1u64 << (self.len() % 64)) - 1;
                        }
                    }
                }
                mask
            }
            None => {
                let mut sorted = codes.to_vec();
                sorted.sort_unstable();
                self.mask_where(|c| c != NO_CODE && sorted.binary_search(&c).is_ok() != negate)
            }
        }
    }

    /// A bit mask with bit `i` set when entry `i` satisfies `pred` (absent
    /// entries are passed as [`NO_CODE`]). One-byte codes go through a
    /// 256-entry table; every width fills the mask 64 entries per output
    /// word, without a branch per entry.
    pub fn mask_where(&self, mut pred: impl FnMut(u32) -> bool) -> Vec<u64> {
        /// 64 entries per output word: bit `j` is `hit(chunk[j])`.
        fn words<T: Copy>(v: &[T], mut hit: impl FnMut(T) -> bool) -> Vec<u64> {
            let mut mask = vec![0u64; v.len().div_ceil(64)];
            for (word, chunk) in mask.iter_mut().zip(v.chunks(64)) {
                let mut w = 0u64;
                for (j, &c) in chunk.iter().enumerate() {
                    w |= u64::from(hit(c)) << j;
                }
                *word = w;
            }
            mask
        }
        match self {
            CodeVec::U8(v) => {
                let mut table = [false; 256];
                for (c, t) in table.iter_mut().enumerate() {
                    *t = pred(if c == 255 { NO_CODE } else { c as u32 });
                }
                words(v, |c| table[c as usize])
            }
            CodeVec::U16(v) => words(v, |c| pred(if c == u16::MAX { NO_CODE } else { u32::from(c) })),
            CodeVec::U32(v) => words(v, pred),
        }
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        match self {
            CodeVec::U8(v) => v.capacity(),
            CodeVec::U16(v) => v.capacity() * 2,
            CodeVec::U32(v) => v.capacity() * 4,
        }
    }
}

/// A keyword trait: dictionary code per row and one bitmap per value.
#[derive(Clone, Debug, Default)]
pub struct KeywordColumn {
    /// Value dictionary.
    pub dict: Dict,
    /// Code per row, [`NO_CODE`] when unset.
    pub codes: CodeVec,
    /// Rows per code.
    pub bitmaps: Vec<RoaringBitmap>,
    /// Rows with a value.
    pub present: RoaringBitmap,
    /// Message time of each row's value.
    pub stamps: Stamps,
}

impl KeywordColumn {
    /// The row's value.
    pub fn get(&self, row: Row) -> Option<&str> {
        let i = row as usize;
        match i < self.codes.len() {
            true => match self.codes.get(i) {
                NO_CODE => None,
                c => Some(self.dict.value(c)),
            },
            false => None,
        }
    }

    /// Sets or unsets the row's value, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<&str>) {
        if (row as usize) < self.codes.len() {
            let old = self.codes.get(row as usize);
            if old != NO_CODE {
                self.bitmaps[old as usize].remove(row);
            }
        }
        match value {
            Some(v) => {
                let c = self.dict.intern(v);
                if c as usize == self.bitmaps.len() {
                    self.bitmaps.push(RoaringBitmap::new());
                }
                self.bitmaps[c as usize].insert(row);
                self.codes.set(row as usize, c);
                self.present.insert(row);
            }
            None => {
                if (row as usize) < self.codes.len() {
                    self.codes.set(row as usize, NO_CODE);
                }
                self.present.remove(row);
            }
        }
    }

    /// The rows whose value is `value`, if any row ever had it.
    pub fn rows_of(&self, value: &str) -> Option<&RoaringBitmap> {
        self.dict.code(value).map(|c| &self.bitmaps[c as usize])
    }

    /// Checks the index against the column.
    pub fn validate(&self) -> Result<(), String> {
        let mut present = RoaringBitmap::new();
        for (row, c) in self.codes.to_u32s().into_iter().enumerate() {
            if c == NO_CODE {
                continue;
            }
            let row = row as u32;
            present.insert(row);
            if !self.bitmaps[c as usize].contains(row) {
                return Err(format!("row {row} has code {c} but is not in its bitmap"));
            }
        }
        if present != self.present {
            return Err("presence bitmap differs from the codes".to_string());
        }
        let total: u64 = self.bitmaps.iter().map(RoaringBitmap::len).sum();
        if total != present.len() {
            return Err(format!("bitmaps hold {total} rows, column {}", present.len()));
        }
        Ok(())
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.dict.heap_bytes()
            + self.codes.heap_bytes()
            + self.bitmaps.iter().map(RoaringBitmap::serialized_size).sum::<usize>()
            + self.present.serialized_size()
            + self.stamps.heap_bytes()
    }
}

/// What [`CodeSets::room`] found.
enum Room {
    /// The arena has room as it is.
    Free,
    /// The arena has room once the row's set is freed and it is rewritten.
    AfterCompaction,
}

/// A sorted set of codes per row, packed in one arena: `starts[row]` is
/// the offset plus one of `[len, code, code, ...]` in `arena` (0: no set).
/// A replaced set becomes garbage; once garbage passes half the arena (and
/// 64 Ki codes), the arena is rewritten in row order. About 8 bytes for a
/// row with one element, against 32 or more for a boxed slice per row.
#[derive(Clone, Debug, Default)]
pub struct CodeSets {
    starts: Vec<u32>,
    arena: Vec<u32>,
    garbage: usize,
}

impl CodeSets {
    /// The row's codes, if it has a set (possibly empty).
    pub fn get(&self, row: Row) -> Option<&[u32]> {
        match self.starts.get(row as usize) {
            Some(&s) if s != 0 => {
                let at = (s - 1) as usize;
                let len = self.arena[at] as usize;
                Some(&self.arena[at + 1..at + 1 + len])
            }
            _ => None,
        }
    }

    /// One past the highest row that ever had a set (for snapshots).
    pub fn row_bound(&self) -> usize {
        self.starts.len()
    }

    /// Whether a set of `len` codes fits in `limit` codes (at most 4 Gi,
    /// what a start can address) once the row's set is freed (`own`): the
    /// arena as it is, or rewritten without garbage. The answer depends
    /// only on the sets held, so a replay decides alike; an error says how
    /// full the arena is.
    fn room(&self, row: Row, own: bool, len: usize, limit: usize) -> Result<Room, String> {
        let limit = limit.min(u32::MAX as usize);
        let need = len + 1;
        if self.arena.len() + need <= limit {
            return Ok(Room::Free);
        }
        let freed = if own { self.get(row).map_or(0, |c| c.len() + 1) } else { 0 };
        let held = self.arena.len() - self.garbage - freed;
        if held + need > limit {
            return Err(format!(
                "the shard's list arena for it holds {held} codes, and {need} more would pass its limit of {limit} codes"
            ));
        }
        Ok(Room::AfterCompaction)
    }

    /// Replaces the row's set (`codes` sorted and distinct). The caller has
    /// made room ([`make_room`](Self::make_room)).
    pub fn set(&mut self, row: Row, codes: Option<&[u32]>) {
        let i = row as usize;
        if i >= self.starts.len() {
            if codes.is_none() {
                return;
            }
            self.starts.resize(i + 1, 0);
        }
        if let Some(old) = self.get(row) {
            self.garbage += old.len() + 1;
        }
        self.starts[i] = match codes {
            None => 0,
            Some(codes) => {
                let start = u32::try_from(self.arena.len() + 1)
                    .unwrap_or_else(|_| panic!("list arena over 4 Gi codes at row {row}: room was not made"));
                self.arena.push(codes.len() as u32);
                self.arena.extend_from_slice(codes);
                start
            }
        };
        if self.garbage > 1 << 16 && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Rewrites the arena without garbage, in row order.
    pub(crate) fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for start in self.starts.iter_mut().filter(|s| **s != 0) {
            let at = (*start - 1) as usize;
            let len = self.arena[at] as usize;
            // The arena only shrinks, so the new offset fits in u32 too.
            *start = (arena.len() + 1) as u32;
            arena.extend_from_slice(&self.arena[at..at + 1 + len]);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// The memory image, for snapshots: `starts` and an arena holding the
    /// sets in row order without garbage (copied only when the arena is not
    /// already so).
    pub fn image(&self) -> (Cow<'_, [u32]>, Cow<'_, [u32]>) {
        let mut pos = 0usize;
        let mut in_order = self.garbage == 0;
        for &start in self.starts.iter().filter(|s| **s != 0) {
            if !in_order || start as usize - 1 != pos {
                in_order = false;
                break;
            }
            pos += 1 + self.arena[pos] as usize;
        }
        if in_order && pos == self.arena.len() {
            return (Cow::Borrowed(&self.starts[..]), Cow::Borrowed(&self.arena[..]));
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        let starts = (0..self.starts.len() as Row)
            .map(|row| match self.get(row) {
                None => 0,
                Some(codes) => {
                    // The image is no larger than the arena, so this fits.
                    let start = (arena.len() + 1) as u32;
                    arena.push(codes.len() as u32);
                    arena.extend_from_slice(codes);
                    start
                }
            })
            .collect();
        (Cow::Owned(starts), Cow::Owned(arena))
    }

    /// Takes back an image from [`image`](Self::image), checking in one pass
    /// that the sets follow each other in row order inside the arena and
    /// that each is a strictly increasing list of codes below `dict_len`.
    /// Returns the sets and the rows that have one.
    pub fn from_image(
        starts: Vec<u32>,
        arena: Vec<u32>,
        dict_len: usize,
    ) -> Result<(Self, RoaringBitmap), String> {
        let present = walk_arena(&starts, arena.len(), "set", "codes", |row, pos| {
            let len = arena
                .get(pos)
                .map(|&n| n as usize)
                .ok_or_else(|| format!("row {row}: set past the arena"))?;
            let codes = arena
                .get(pos + 1..)
                .and_then(|rest| rest.get(..len))
                .ok_or_else(|| format!("row {row}: set of {len} codes runs past the arena"))?;
            if codes.last().is_some_and(|&c| c as usize >= dict_len) || codes.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(format!("row {row}: codes not a sorted set below {dict_len}"));
            }
            Ok(pos + 1 + len)
        })?;
        Ok((CodeSets { starts, arena, garbage: 0 }, present))
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4 + self.arena.capacity() * 4
    }

    /// Gives back spare capacity.
    pub fn shrink_to_fit(&mut self) {
        self.starts.shrink_to_fit();
        self.arena.shrink_to_fit();
    }
}

/// A list trait: a sorted set of element codes per row, one bitmap per element.
#[derive(Clone, Debug, Default)]
pub struct ListColumn {
    /// Element dictionary.
    pub dict: Dict,
    /// Sorted element codes per row; `None` when unset (an empty list is set).
    pub rows: CodeSets,
    /// Rows per element.
    pub bitmaps: Vec<RoaringBitmap>,
    /// Rows with a value.
    pub present: RoaringBitmap,
    /// Message time of each row's value.
    pub stamps: Stamps,
}

impl ListColumn {
    /// The row's elements.
    pub fn get(&self, row: Row) -> Option<Vec<String>> {
        let codes = self.rows.get(row)?;
        let mut v: Vec<String> = codes.iter().map(|&c| self.dict.value(c).to_string()).collect();
        v.sort();
        Some(v)
    }

    /// Makes room for [`put`](Self::put) of `len` elements in the row
    /// within `limit` arena codes: the row's present set is replaced by the
    /// put, so it does not count, and when the arena is short of room the
    /// row is cleared and the arena rewritten without garbage. An error
    /// leaves the column as it was (see [`CodeSets::room`]).
    pub fn make_room(&mut self, row: Row, len: usize, limit: usize) -> Result<(), String> {
        match self.rows.room(row, true, len, limit)? {
            Room::Free => {}
            Room::AfterCompaction => {
                self.put(row, None);
                self.rows.compact();
            }
        }
        Ok(())
    }

    /// Sets or unsets the row's elements, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<&[String]>) {
        if let Some(old) = self.rows.get(row) {
            for &c in old {
                self.bitmaps[c as usize].remove(row);
            }
        }
        match value {
            Some(items) => {
                let mut codes: Vec<u32> = items.iter().map(|s| self.dict.intern(s)).collect();
                codes.sort_unstable();
                codes.dedup();
                for &c in &codes {
                    while self.bitmaps.len() <= c as usize {
                        self.bitmaps.push(RoaringBitmap::new());
                    }
                    self.bitmaps[c as usize].insert(row);
                }
                self.rows.set(row, Some(&codes));
                self.present.insert(row);
            }
            None => {
                self.rows.set(row, None);
                self.present.remove(row);
            }
        }
    }

    /// The rows whose list holds `element`.
    pub fn rows_of(&self, element: &str) -> Option<&RoaringBitmap> {
        self.dict.code(element).map(|c| &self.bitmaps[c as usize])
    }

    /// Checks the index against the column.
    pub fn validate(&self) -> Result<(), String> {
        let mut present = RoaringBitmap::new();
        let mut total = 0u64;
        for row in 0..self.rows.row_bound() as Row {
            let Some(codes) = self.rows.get(row) else { continue };
            present.insert(row);
            if codes.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("row {row}: codes not a sorted set"));
            }
            for &c in codes.iter() {
                total += 1;
                if !self.bitmaps[c as usize].contains(row) {
                    return Err(format!("row {row} holds code {c} but is not in its bitmap"));
                }
            }
        }
        if present != self.present {
            return Err("presence bitmap differs from the rows".to_string());
        }
        let indexed: u64 = self.bitmaps.iter().map(RoaringBitmap::len).sum();
        if indexed != total {
            return Err(format!("bitmaps hold {indexed} entries, rows {total}"));
        }
        Ok(())
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.dict.heap_bytes()
            + self.rows.heap_bytes()
            + self.bitmaps.iter().map(RoaringBitmap::serialized_size).sum::<usize>()
            + self.present.serialized_size()
            + self.stamps.heap_bytes()
    }
}

/// A bool trait: two bitmaps.
#[derive(Clone, Debug, Default)]
pub struct BoolColumn {
    /// Rows whose value is `true`.
    pub trues: RoaringBitmap,
    /// Rows whose value is `false`.
    pub falses: RoaringBitmap,
    /// Message time of each row's value.
    pub stamps: Stamps,
}

impl BoolColumn {
    /// The row's value.
    pub fn get(&self, row: Row) -> Option<bool> {
        if self.trues.contains(row) {
            Some(true)
        } else if self.falses.contains(row) {
            Some(false)
        } else {
            None
        }
    }

    /// Sets or unsets the row's value, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<bool>) {
        self.trues.remove(row);
        self.falses.remove(row);
        match value {
            Some(true) => {
                self.trues.insert(row);
            }
            Some(false) => {
                self.falses.insert(row);
            }
            None => {}
        }
    }

    /// The rows with a value.
    pub fn present(&self) -> RoaringBitmap {
        &self.trues | &self.falses
    }

    /// Checks that no row is both true and false.
    pub fn validate(&self) -> Result<(), String> {
        match self.trues.intersection_len(&self.falses) {
            0 => Ok(()),
            n => Err(format!("{n} rows are both true and false")),
        }
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.trues.serialized_size() + self.falses.serialized_size() + self.stamps.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_let_later_and_tied_writes_win() {
        let mut base = Vec::new();
        let mut s = Stamps::default();
        assert!(s.admit(3, (10, 5), &mut base));
        assert_eq!(base[3], (10, 5), "the first write sets the base");
        assert!(!s.admit(3, (9, 9), &mut base), "an older time loses whatever its seq");
        assert!(!s.admit(3, (10, 4), &mut base), "a tie of time goes to the later ingested");
        assert!(s.admit(3, (10, 5), &mut base), "the same stamp again is admitted");
        assert!(s.admit(3, (10, 6), &mut base));
        assert!(s.admit(3, (11, 0), &mut base));
        assert_eq!(s.get(3, &base), (11, 0));
        assert_eq!(s.own.len(), 1, "a stamp off the base is an exception");
        assert_eq!(s.get(100, &base), NEVER);
        let mut other = Stamps::default();
        assert_eq!(other.get(3, &base), NEVER, "a base stamp alone is not a write");
        assert!(other.admit(3, (10, 5), &mut base));
        assert!(other.own.is_empty(), "a write at the base stamp costs no exception");
        s.clear(3);
        assert_eq!(s.get(3, &base), NEVER);
    }

    #[test]
    fn masks_of_code_sets_match_a_plain_loop_in_every_width() {
        // Every width, with absent entries, sets small enough to be scanned
        // and large enough to take the table, plain and negated.
        for top in [200u32, 3_000, 70_000] {
            let codes: Vec<u32> =
                (0..1_000u32).map(|i| if i % 9 == 0 { NO_CODE } else { (i * 7919) % top }).collect();
            let v = CodeVec::from_u32s(&codes);
            let sets: Vec<Vec<u32>> = vec![
                vec![],
                vec![codes[1]],
                vec![codes[1], codes[2], 5, top + 1],
                (0..top).step_by(3).take(40).collect(),
                vec![NO_CODE],
            ];
            for set in &sets {
                for negate in [false, true] {
                    let want: Vec<u64> = {
                        let mut m = vec![0u64; codes.len().div_ceil(64)];
                        for (i, &c) in codes.iter().enumerate() {
                            if c != NO_CODE && set.contains(&c) != negate {
                                m[i / 64] |= 1 << (i % 64);
                            }
                        }
                        m
                    };
                    assert_eq!(v.mask_in(set, negate), want, "top {top} set {set:?} negate {negate}");
                }
            }
        }
    }

    #[test]
    fn code_vectors_widen_and_keep_absent() {
        let mut v = CodeVec::absent(2);
        v.push(7);
        v.set(5, 254);
        assert!(matches!(v, CodeVec::U8(_)));
        v.push(300);
        assert!(matches!(v, CodeVec::U16(_)));
        v.set(1, 70_000);
        assert!(matches!(v, CodeVec::U32(_)));
        assert_eq!(v.to_u32s(), vec![NO_CODE, 70_000, 7, NO_CODE, NO_CODE, 254, 300]);
        assert_eq!(v.mask_where(|c| c == NO_CODE), vec![0b11001]);
        let narrow = CodeVec::from_u32s(
            &(0..130).map(|i| if i % 7 == 0 { NO_CODE } else { i % 5 }).collect::<Vec<_>>(),
        );
        let mask = narrow.mask_where(|c| c == 3 || c == NO_CODE);
        for i in 0..130usize {
            let want = i % 7 == 0 || i % 5 == 3;
            assert_eq!(mask[i / 64] >> (i % 64) & 1 == 1, want, "entry {i}");
        }
        v.retain(&[true, false, true, true, false, true, true]);
        assert_eq!(v.to_u32s(), vec![NO_CODE, 7, NO_CODE, 254, 300]);
        assert_eq!(CodeVec::from_u32s(&[1, NO_CODE]).to_u32s(), vec![1, NO_CODE]);
    }

    #[test]
    fn codes_outside_the_dictionary_are_found_in_every_width() {
        let narrow = CodeVec::from_u32s(&[0, NO_CODE, 3, 1]);
        assert_eq!(narrow.first_code_outside(4), None);
        assert_eq!(narrow.first_code_outside(3), Some((2, 3)));
        assert_eq!(CodeVec::from_u32s(&[NO_CODE, 0]).first_code_outside(0), Some((1, 0)));
        assert_eq!(CodeVec::from_u32s(&[NO_CODE]).first_code_outside(0), None);
        let mid = CodeVec::from_u32s(&[300, NO_CODE, 2]);
        assert!(matches!(mid, CodeVec::U16(_)));
        assert_eq!(mid.first_code_outside(301), None);
        assert_eq!(mid.first_code_outside(300), Some((0, 300)));
        let wide = CodeVec::from_u32s(&[70_000, NO_CODE]);
        assert_eq!(wide.first_code_outside(70_000), Some((0, 70_000)));
        assert_eq!(wide.first_code_outside(70_001), None);
    }

    #[test]
    fn code_set_images_reload_and_bad_ones_are_refused() {
        let mut sets = CodeSets::default();
        sets.set(3, Some(&[1, 4]));
        sets.set(0, Some(&[]));
        sets.set(5, Some(&[2]));
        sets.set(3, Some(&[0, 2, 4]));
        sets.set(5, None);
        let (starts, arena) = sets.image();
        let (back, present) = CodeSets::from_image(starts.to_vec(), arena.to_vec(), 5).unwrap();
        for row in 0..8 {
            assert_eq!(back.get(row), sets.get(row), "row {row}");
        }
        assert_eq!(present.iter().collect::<Vec<_>>(), vec![0, 3]);
        assert!(matches!(back.image().1, Cow::Borrowed(_)), "a reloaded image is already compact");

        let load = |starts: &[u32], arena: &[u32], dict_len| {
            CodeSets::from_image(starts.to_vec(), arena.to_vec(), dict_len).map(|_| ())
        };
        assert!(load(&starts, &arena, 4).unwrap_err().contains("below 4"));
        let mut unsorted = arena.to_vec();
        unsorted.swap(2, 3);
        assert!(load(&starts, &unsorted, 5).unwrap_err().contains("sorted set"));
        let mut past = starts.to_vec();
        past[3] = 40;
        assert!(load(&past, &arena, 5).unwrap_err().contains("row 3"));
        let mut long = arena.to_vec();
        long[1] = 9;
        assert!(load(&starts, &long, 5).unwrap_err().contains("runs past"));
        let mut extra = arena.to_vec();
        extra.push(0);
        assert!(load(&starts, &extra, 5).unwrap_err().contains("after the last set"));
    }

    #[test]
    fn row_marks_make_the_bitmap_of_their_rows() {
        let rows = [0u32, 5, 6, 7, 64, 65_535, 65_536, 200_001];
        let mut marks = RowMarks::new(200_002);
        for r in rows {
            assert!(marks.mark(r as usize));
        }
        assert!(!marks.mark(5), "a second mark is reported");
        assert_eq!(marks.into_bitmap(), rows.into_iter().collect::<RoaringBitmap>());
        assert!(RowMarks::new(0).into_bitmap().is_empty());
    }

    #[test]
    fn keyword_index_follows_writes() {
        let mut k = KeywordColumn::default();
        k.put(1, Some("FR"));
        k.put(2, Some("FR"));
        k.put(1, Some("DE"));
        k.put(2, None);
        assert_eq!(k.get(1), Some("DE"));
        assert_eq!(k.get(2), None);
        assert_eq!(k.rows_of("FR").map(RoaringBitmap::len), Some(0));
        k.validate().unwrap();
    }

    #[test]
    fn list_index_follows_writes() {
        let mut l = ListColumn::default();
        l.put(0, Some(&["b".to_string(), "a".to_string(), "a".to_string()]));
        l.put(1, Some(&[]));
        assert_eq!(l.get(0), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(l.get(1), Some(vec![]));
        l.put(0, None);
        assert_eq!(l.rows_of("a").map(RoaringBitmap::len), Some(0));
        l.validate().unwrap();
    }
}
