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
//! - [`TextColumn`]: the strings, with a hash index for equality; no bitmaps.
//! - Numbers and timestamps live in [`RangeColumn`](super::range::RangeColumn).
//!
//! Invariant shared by all: an index holds only rows whose value is set, and
//! `present` is exactly the set of such rows. Removing a row clears it
//! everywhere, so every index is a subset of the shard's universe.

use ahash::AHashMap;
use roaring::RoaringBitmap;

use super::Row;

/// Code of "no value" in a dictionary-coded column.
pub const NO_CODE: u32 = u32::MAX;

/// Time of a value never written: older than any message.
pub const NEVER: i64 = i64::MIN;

/// Message times per row, for last-write-wins. A time is kept after a value
/// is unset by `null`, so that an older message arriving late cannot bring
/// the value back.
#[derive(Clone, Debug, Default)]
pub struct Stamps {
    times: Vec<i64>,
}

impl Stamps {
    /// The time of the row's current value (or of its unset), [`NEVER`] if
    /// it was never written.
    pub fn get(&self, row: Row) -> i64 {
        self.times.get(row as usize).copied().unwrap_or(NEVER)
    }

    /// Records a write at `time` if it wins against the stored one: a later
    /// time wins, and on a tie the write applied later wins (INGEST.md).
    pub fn admit(&mut self, row: Row, time: i64) -> bool {
        let i = row as usize;
        if i >= self.times.len() {
            self.times.resize(i + 1, NEVER);
        }
        if time >= self.times[i] {
            self.times[i] = time;
            true
        } else {
            false
        }
    }

    /// Forgets the row's time (the row is removed).
    pub fn clear(&mut self, row: Row) {
        if let Some(t) = self.times.get_mut(row as usize) {
            *t = NEVER;
        }
    }

    /// The raw times, indexed by row (for snapshots).
    pub fn as_slice(&self) -> &[i64] {
        &self.times
    }

    /// Rebuilds from raw times (for snapshots).
    pub fn from_vec(times: Vec<i64>) -> Self {
        Stamps { times }
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.times.capacity() * 8
    }
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

fn set_code(codes: &mut Vec<u32>, row: Row, code: u32) {
    let i = row as usize;
    if i >= codes.len() {
        codes.resize(i + 1, NO_CODE);
    }
    codes[i] = code;
}

/// A keyword trait: dictionary code per row and one bitmap per value.
#[derive(Clone, Debug, Default)]
pub struct KeywordColumn {
    /// Value dictionary.
    pub dict: Dict,
    /// Code per row, [`NO_CODE`] when unset.
    pub codes: Vec<u32>,
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
        match self.codes.get(row as usize) {
            Some(&c) if c != NO_CODE => Some(self.dict.value(c)),
            _ => None,
        }
    }

    /// Sets or unsets the row's value, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<&str>) {
        if let Some(&old) = self.codes.get(row as usize) {
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
                set_code(&mut self.codes, row, c);
                self.present.insert(row);
            }
            None => {
                set_code(&mut self.codes, row, NO_CODE);
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
        for (row, &c) in self.codes.iter().enumerate() {
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
            + self.codes.capacity() * 4
            + self.bitmaps.iter().map(RoaringBitmap::serialized_size).sum::<usize>()
            + self.present.serialized_size()
            + self.stamps.heap_bytes()
    }
}

/// A list trait: a sorted set of element codes per row, one bitmap per element.
#[derive(Clone, Debug, Default)]
pub struct ListColumn {
    /// Element dictionary.
    pub dict: Dict,
    /// Sorted element codes per row; `None` when unset (an empty list is set).
    pub rows: Vec<Option<Box<[u32]>>>,
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
        let codes = self.rows.get(row as usize)?.as_ref()?;
        let mut v: Vec<String> = codes.iter().map(|&c| self.dict.value(c).to_string()).collect();
        v.sort();
        Some(v)
    }

    /// Sets or unsets the row's elements, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<&[String]>) {
        let i = row as usize;
        if i >= self.rows.len() {
            self.rows.resize(i + 1, None);
        }
        if let Some(old) = self.rows[i].take() {
            for &c in old.iter() {
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
                self.rows[i] = Some(codes.into_boxed_slice());
                self.present.insert(row);
            }
            None => {
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
        for (row, codes) in self.rows.iter().enumerate() {
            let Some(codes) = codes else { continue };
            let row = row as u32;
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
            + self.rows.capacity() * 16
            + self.rows.iter().flatten().map(|c| c.len() * 4).sum::<usize>()
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

/// Strings with a hash index for equality: text traits (one value per row)
/// and identifiers (any number per row, each owned by one row).
#[derive(Clone, Debug, Default)]
pub struct TextColumn {
    /// Values per row, sorted; empty when unset.
    pub rows: Vec<Vec<Box<str>>>,
    /// Rows per value.
    pub index: AHashMap<Box<str>, Vec<Row>>,
    /// Rows with at least one value.
    pub present: RoaringBitmap,
    /// Message time of each row's value (text traits only).
    pub stamps: Stamps,
}

impl TextColumn {
    /// The row's values.
    pub fn get(&self, row: Row) -> &[Box<str>] {
        self.rows.get(row as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Replaces the row's values, ignoring the stamps.
    pub fn put(&mut self, row: Row, value: Option<&str>) {
        self.clear(row);
        if let Some(v) = value {
            self.add(row, v);
        }
    }

    /// Adds one value to the row (identifiers). Adding a value it has is a no-op.
    pub fn add(&mut self, row: Row, value: &str) {
        let i = row as usize;
        if i >= self.rows.len() {
            self.rows.resize(i + 1, Vec::new());
        }
        let values = &mut self.rows[i];
        if let Err(at) = values.binary_search_by(|v| (**v).cmp(value)) {
            values.insert(at, value.into());
            let rows = self.index.entry(value.into()).or_default();
            if let Err(at) = rows.binary_search(&row) {
                rows.insert(at, row);
            }
            self.present.insert(row);
        }
    }

    /// Removes every value of the row.
    pub fn clear(&mut self, row: Row) {
        let Some(values) = self.rows.get_mut(row as usize) else { return };
        for v in values.drain(..) {
            if let Some(rows) = self.index.get_mut(&v) {
                rows.retain(|&r| r != row);
                if rows.is_empty() {
                    self.index.remove(&v);
                }
            }
        }
        self.present.remove(row);
    }

    /// The rows holding `value`.
    pub fn rows_of(&self, value: &str) -> &[Row] {
        self.index.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Checks the hash index against the rows.
    pub fn validate(&self) -> Result<(), String> {
        let mut entries = 0usize;
        for (row, values) in self.rows.iter().enumerate() {
            let row = row as u32;
            if values.is_empty() == self.present.contains(row) {
                return Err(format!("row {row}: presence disagrees with its values"));
            }
            for v in values {
                entries += 1;
                if !self.rows_of(v).contains(&row) {
                    return Err(format!("row {row}: value {v:?} missing from the index"));
                }
            }
        }
        let indexed: usize = self.index.values().map(Vec::len).sum();
        if indexed != entries {
            return Err(format!("index holds {indexed} entries, rows {entries}"));
        }
        Ok(())
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.rows.capacity() * 24
            + self.rows.iter().flatten().map(|v| v.len() * 2 + 16 + 16).sum::<usize>()
            + self.index.len() * 48
            + self.present.serialized_size()
            + self.stamps.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_let_later_and_tied_writes_win() {
        let mut s = Stamps::default();
        assert!(s.admit(3, 10));
        assert!(!s.admit(3, 9));
        assert!(s.admit(3, 10));
        assert!(s.admit(3, 11));
        assert_eq!(s.get(3), 11);
        assert_eq!(s.get(100), NEVER);
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
    fn list_and_text_indexes_follow_writes() {
        let mut l = ListColumn::default();
        l.put(0, Some(&["b".to_string(), "a".to_string(), "a".to_string()]));
        l.put(1, Some(&[]));
        assert_eq!(l.get(0), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(l.get(1), Some(vec![]));
        l.put(0, None);
        assert_eq!(l.rows_of("a").map(RoaringBitmap::len), Some(0));
        l.validate().unwrap();

        let mut t = TextColumn::default();
        t.put(4, Some("x@y"));
        t.add(4, "z");
        t.put(5, Some("x@y"));
        assert_eq!(t.rows_of("x@y"), &[4, 5]);
        t.clear(4);
        assert_eq!(t.rows_of("x@y"), &[5]);
        assert!(t.rows_of("z").is_empty());
        t.validate().unwrap();
    }
}
