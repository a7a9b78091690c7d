//! Text columns: strings stored compactly with a hash index for equality.
//!
//! Used for `text` traits (one value per row: emails, names) and for
//! identifiers (`user_id`, `anonymous_id`: usually one per row, sometimes
//! several). Text is not bitmap-indexed: the only question asked of it is
//! "which rows hold exactly this string".
//!
//! Layout, chosen for memory (a naive `Vec<Vec<Box<str>>>` plus a
//! `HashMap<Box<str>, Vec<u32>>` costs over 100 bytes per value):
//!
//! - `arena`: every row's first value as `[varint length][UTF-8 bytes]`,
//!   appended; `starts[row]` is its offset plus one (0: no value). An
//!   overwritten value becomes garbage; when garbage passes half the arena,
//!   the arena is rewritten in row order.
//! - `index`: a hash table of rows keyed by the hash of their first value;
//!   a lookup hashes the probe and compares it with the arena bytes of each
//!   candidate row, so the table stores 4 bytes per value and no string.
//! - `extra`: the second and further values of a row (identifiers only),
//!   with their own small index.

use std::collections::BTreeMap;

use ahash::AHashMap;
use hashbrown::HashTable;
use roaring::RoaringBitmap;

use super::columns::Stamps;
use super::Row;

/// Hashing with fixed keys: the table's layout is then the same on every
/// replica (it does not change answers, but it keeps memory use and timings
/// reproducible).
fn hash_of(value: &str) -> u64 {
    ahash::RandomState::with_seeds(0x5eed, 0xc0de, 0xcafe, 0xf00d).hash_one(value)
}

/// Rewrite the arena once garbage exceeds half of it and this many bytes.
const COMPACT_MIN_BYTES: usize = 1 << 16;

/// Strings per row with an equality index. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct TextColumn {
    starts: Vec<u32>,
    arena: Vec<u8>,
    garbage: usize,
    index: HashTable<Row>,
    extra: BTreeMap<Row, Vec<Box<str>>>,
    extra_index: AHashMap<Box<str>, Vec<Row>>,
    /// Rows with at least one value.
    pub present: RoaringBitmap,
    /// Message time of each row's value (text traits only).
    pub stamps: Stamps,
}

/// Reads the value stored at `start - 1` in `arena`.
fn value_at(arena: &[u8], start: u32) -> &str {
    let mut pos = (start - 1) as usize;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = arena[pos];
        pos += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    // The bytes were copied from a `&str`, so they are valid UTF-8.
    std::str::from_utf8(&arena[pos..pos + len]).unwrap_or_default()
}

fn encoded_len(value: &str) -> usize {
    let mut n = value.len();
    let mut bytes = 1;
    while n >= 0x80 {
        n >>= 7;
        bytes += 1;
    }
    bytes + value.len()
}

impl TextColumn {
    /// The row's first value (the value of a text trait).
    pub fn first(&self, row: Row) -> Option<&str> {
        match self.starts.get(row as usize) {
            Some(&s) if s != 0 => Some(value_at(&self.arena, s)),
            _ => None,
        }
    }

    /// Every value of the row, sorted.
    pub fn values(&self, row: Row) -> Vec<&str> {
        let mut out: Vec<&str> = self.first(row).into_iter().collect();
        if let Some(more) = self.extra.get(&row) {
            out.extend(more.iter().map(|s| &**s));
        }
        out.sort_unstable();
        out
    }

    /// True when the row holds `value`.
    pub fn holds(&self, row: Row, value: &str) -> bool {
        self.first(row) == Some(value)
            || self.extra.get(&row).is_some_and(|m| m.iter().any(|v| &**v == value))
    }

    /// One past the highest row that ever had a value (for snapshots).
    pub fn row_bound(&self) -> usize {
        self.starts.len().max(self.extra.keys().next_back().map_or(0, |&r| r as usize + 1))
    }

    /// Replaces the row's values with `value`, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<&str>) {
        if value.is_some() && self.first(row) == value && !self.extra.contains_key(&row) {
            return;
        }
        self.clear(row);
        if let Some(v) = value {
            self.add(row, v);
        }
    }

    /// Adds a value to the row (identifiers). Adding a value it holds is a no-op.
    pub fn add(&mut self, row: Row, value: &str) {
        if self.holds(row, value) {
            return;
        }
        let i = row as usize;
        if i >= self.starts.len() {
            self.starts.resize(i + 1, 0);
        }
        if self.starts[i] == 0 {
            let offset = self.arena.len();
            let start = u32::try_from(offset + 1)
                .unwrap_or_else(|_| panic!("text arena over 4 GiB at row {row}: split the shard"));
            let mut n = value.len();
            while n >= 0x80 {
                self.arena.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            self.arena.push(n as u8);
            self.arena.extend_from_slice(value.as_bytes());
            self.starts[i] = start;
            let (arena, starts) = (&self.arena, &self.starts);
            self.index.insert_unique(hash_of(value), row, |&r| hash_of(value_at(arena, starts[r as usize])));
        } else {
            let more = self.extra.entry(row).or_default();
            let at = more.binary_search_by(|v| (**v).cmp(value)).unwrap_or_else(|e| e);
            more.insert(at, value.into());
            let rows = self.extra_index.entry(value.into()).or_default();
            if let Err(at) = rows.binary_search(&row) {
                rows.insert(at, row);
            }
        }
        self.present.insert(row);
    }

    /// Removes every value of the row.
    pub fn clear(&mut self, row: Row) {
        if let Some(more) = self.extra.remove(&row) {
            for v in more {
                if let Some(rows) = self.extra_index.get_mut(&v) {
                    rows.retain(|&r| r != row);
                    if rows.is_empty() {
                        self.extra_index.remove(&v);
                    }
                }
            }
        }
        let i = row as usize;
        if let Some(&start) = self.starts.get(i) {
            if start != 0 {
                let value = value_at(&self.arena, start);
                self.garbage += encoded_len(value);
                if let Ok(entry) = self.index.find_entry(hash_of(value), |&r| r == row) {
                    entry.remove();
                }
                self.starts[i] = 0;
            }
        }
        self.present.remove(row);
        if self.garbage > COMPACT_MIN_BYTES && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Rewrites the arena without garbage, in row order.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for start in self.starts.iter_mut().filter(|s| **s != 0) {
            let value = value_at(&self.arena, *start);
            let from = (*start - 1) as usize;
            let len = encoded_len(value);
            // The arena only shrinks, so the new offset fits in u32 too.
            *start = (arena.len() + 1) as u32;
            arena.extend_from_slice(&self.arena[from..from + len]);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// The rows holding `value`, sorted.
    pub fn rows_of(&self, value: &str) -> Vec<Row> {
        let mut rows: Vec<Row> =
            self.index.iter_hash(hash_of(value)).copied().filter(|&r| self.first(r) == Some(value)).collect();
        if let Some(more) = self.extra_index.get(value) {
            rows.extend_from_slice(more);
        }
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// Checks the index, the extra values and presence against the rows.
    pub fn validate(&self) -> Result<(), String> {
        let mut firsts = 0usize;
        for (i, &start) in self.starts.iter().enumerate() {
            let row = i as Row;
            if start == 0 {
                if self.extra.contains_key(&row) {
                    return Err(format!("row {row} has extra values but no first value"));
                }
                continue;
            }
            firsts += 1;
            let v = value_at(&self.arena, start);
            if !self.rows_of(v).contains(&row) {
                return Err(format!("row {row}: value {v:?} missing from the index"));
            }
        }
        if firsts != self.index.len() {
            return Err(format!("index holds {} rows, column {firsts}", self.index.len()));
        }
        let present: RoaringBitmap =
            self.starts.iter().enumerate().filter(|(_, &s)| s != 0).map(|(i, _)| i as Row).collect();
        if present != self.present {
            return Err("presence bitmap differs from the rows".to_string());
        }
        let mut extras = 0usize;
        for (row, more) in &self.extra {
            if more.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("row {row}: extra values not a sorted set"));
            }
            for v in more {
                extras += 1;
                if !self.extra_index.get(v).is_some_and(|rows| rows.contains(row)) {
                    return Err(format!("row {row}: extra value {v:?} missing from the index"));
                }
            }
        }
        if extras != self.extra_index.values().map(Vec::len).sum::<usize>() {
            return Err("extra index and extra values disagree".to_string());
        }
        Ok(())
    }

    /// Gives back spare capacity.
    pub fn shrink_to_fit(&mut self) {
        self.starts.shrink_to_fit();
        self.arena.shrink_to_fit();
        let (arena, starts) = (&self.arena, &self.starts);
        self.index.shrink_to_fit(|&r| hash_of(value_at(arena, starts[r as usize])));
        self.stamps.shrink_to_fit();
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4
            + self.arena.capacity()
            + self.index.allocation_size()
            + self.extra.values().map(|v| 48 + v.iter().map(|s| s.len() + 16).sum::<usize>()).sum::<usize>()
            + self.extra_index.iter().map(|(k, v)| k.len() + 48 + v.capacity() * 4).sum::<usize>()
            + self.present.serialized_size()
            + self.stamps.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_writes_and_compaction() {
        let mut t = TextColumn::default();
        t.put(4, Some("x@y"));
        t.add(4, "z");
        t.put(5, Some("x@y"));
        assert_eq!(t.rows_of("x@y"), vec![4, 5]);
        assert_eq!(t.values(4), vec!["x@y", "z"]);
        t.clear(4);
        assert_eq!(t.rows_of("x@y"), vec![5]);
        assert!(t.rows_of("z").is_empty());
        t.validate().unwrap();

        // Enough overwrites to trigger compactions, with long values.
        for round in 0..40 {
            for row in 0..500u32 {
                t.put(row, Some(&format!("value-{round}-{row}-{}", "x".repeat(200))));
            }
        }
        t.validate().unwrap();
        assert!(t.garbage * 2 <= t.arena.len() || t.garbage <= COMPACT_MIN_BYTES);
        let long = format!("value-39-7-{}", "x".repeat(200));
        assert_eq!(t.rows_of(&long), vec![7]);
        assert_eq!(t.first(7), Some(long.as_str()));
    }
}
