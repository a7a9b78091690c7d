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
//! - `index`: a [`RowTable`] of rows keyed by the hash of their first value;
//!   a lookup hashes the probe and compares it with the arena bytes of each
//!   candidate row, so the table stores 4 bytes per slot and no string.
//! - `extra`: the second and further values of a row (identifiers only),
//!   with their own small index.
//!
//! Snapshots store `starts`, the arena (rewritten in row order if it is not)
//! and the index's slots as they are in memory; loading copies them back and
//! checks, in one pass over the arena, that every start points at a whole
//! UTF-8 value ([`TextColumn::from_image`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use ahash::AHashMap;
use roaring::RoaringBitmap;

use super::columns::{walk_arena, Stamps};
use super::row_table::RowTable;
use super::Row;

/// The hash of a text value: xxh3-64 with a fixed seed. Snapshots store
/// the index laid out by it, so it must give the same result on every build
/// and machine, which xxh3 specifies (unlike `std`'s or ahash's hashers);
/// [`text_hash_check`] guards against a change all the same.
pub fn hash_of(value: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(value.as_bytes(), 0x5eed_c0de_cafe_f00d)
}

/// `hash_of` a fixed string, stored with an index image: a reader whose
/// hash differs rebuilds the index instead of probing the image wrongly.
pub fn text_hash_check() -> u64 {
    hash_of("cohort text index check")
}

/// Appends `value` to an arena as `[varint length][bytes]`; returns its
/// start (offset plus one). The caller has made room
/// ([`TextColumn::make_room`]): an arena past 4 GiB is a bug here, not
/// input.
pub fn append_value(arena: &mut Vec<u8>, value: &str, row: Row) -> u32 {
    let offset = arena.len();
    let start = u32::try_from(offset + 1)
        .unwrap_or_else(|_| panic!("text arena over 4 GiB at row {row}: room was not made for the value"));
    let mut n = value.len();
    while n >= 0x80 {
        arena.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    arena.push(n as u8);
    arena.extend_from_slice(value.as_bytes());
    start
}

/// The memory image of a text column's values, for snapshots: `starts` and
/// an arena holding each row's first value in row order, without garbage;
/// the index's slots; and the further values of rows, sorted by row.
pub struct TextImage<'a> {
    /// Offset plus one of each row's first value, 0 for none.
    pub starts: Cow<'a, [u32]>,
    /// The values, `[varint length][UTF-8 bytes]`, in row order.
    pub arena: Cow<'a, [u8]>,
    /// The index's slots.
    pub index: &'a [u32],
    /// `(row, value)` for every value beyond a row's first.
    pub extra: Vec<(Row, &'a str)>,
}

/// Rewrite the arena once garbage exceeds half of it and this many bytes.
const COMPACT_MIN_BYTES: usize = 1 << 16;

/// Strings per row with an equality index. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct TextColumn {
    starts: Vec<u32>,
    arena: Vec<u8>,
    garbage: usize,
    index: RowTable,
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

/// The varint length at the start of `bytes` and the bytes it takes, or
/// `None` when it runs off the end or overflows.
#[inline]
fn read_len(bytes: &[u8]) -> Option<(usize, usize)> {
    // Values under 128 bytes, nearly all of them: a one-byte length.
    match bytes.first() {
        Some(&b) if b < 0x80 => return Some((usize::from(b), 1)),
        None => return None,
        Some(_) => {}
    }
    let mut len = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(9) {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((len, i + 1));
        }
    }
    None
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

    /// Makes room for [`put`](Self::put) of `value` in the row, within
    /// `limit` arena bytes (at most 4 GiB, what a start can address). The
    /// row's present values are replaced by the put, so they do not count:
    /// when the arena is short of room, they are cleared and the arena is
    /// rewritten without garbage. The answer depends only on the values the
    /// column holds, not on its garbage, so a replay of the same entries
    /// decides alike. An error says how full the arena is, and leaves the
    /// column as it was.
    pub fn room_to_put(&mut self, row: Row, value: &str, limit: usize) -> Result<(), String> {
        if self.first(row) == Some(value) && !self.extra.contains_key(&row) {
            return Ok(());
        }
        let own = self.first(row).map_or(0, encoded_len);
        self.make_room(row, own, value, limit)
    }

    /// Makes room for [`add`](Self::add) of `value` to the row, within
    /// `limit` arena bytes, as [`room_to_put`](Self::room_to_put) does; only
    /// a row's first value goes to the arena, and the row keeps its values.
    pub fn room_to_add(&mut self, row: Row, value: &str, limit: usize) -> Result<(), String> {
        if self.first(row).is_some() || self.holds(row, value) {
            return Ok(());
        }
        self.make_room(row, 0, value, limit)
    }

    /// Room for `value` once the row's `own` arena bytes are freed (`own`
    /// is 0 when the row keeps them).
    fn make_room(&mut self, row: Row, own: usize, value: &str, limit: usize) -> Result<(), String> {
        let limit = limit.min(u32::MAX as usize);
        let need = encoded_len(value);
        if self.arena.len() + need <= limit {
            return Ok(());
        }
        let held = self.arena.len() - self.garbage - own;
        if held + need > limit {
            return Err(format!(
                "the shard's text arena for it holds {held} bytes, and {need} more would pass its limit of {limit} bytes"
            ));
        }
        if own > 0 {
            self.clear(row);
        }
        self.compact();
        Ok(())
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
            self.starts[i] = append_value(&mut self.arena, value, row);
            let (arena, starts) = (&self.arena, &self.starts);
            self.index.insert(hash_of(value), row, |r| hash_of(value_at(arena, starts[r as usize])));
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
                let (arena, starts) = (&self.arena, &self.starts);
                self.index.remove(
                    hash_of(value),
                    |r| r == row,
                    |r| hash_of(value_at(arena, starts[r as usize])),
                );
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
            self.index.candidates(hash_of(value)).filter(|&r| self.first(r) == Some(value)).collect();
        if let Some(more) = self.extra_index.get(value) {
            rows.extend_from_slice(more);
        }
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// The column's memory image, for snapshots. The arena is copied only
    /// when it holds garbage or is not in row order.
    pub fn image(&self) -> TextImage<'_> {
        let mut pos = 0usize;
        let mut in_order = self.garbage == 0;
        for &start in self.starts.iter().filter(|s| **s != 0) {
            if !in_order || start as usize - 1 != pos {
                in_order = false;
                break;
            }
            pos += encoded_len(value_at(&self.arena, start));
        }
        let (starts, arena) = if in_order && pos == self.arena.len() {
            (Cow::Borrowed(&self.starts[..]), Cow::Borrowed(&self.arena[..]))
        } else {
            let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
            let starts = self
                .starts
                .iter()
                .enumerate()
                .map(|(row, &start)| match start {
                    0 => 0,
                    s => append_value(&mut arena, value_at(&self.arena, s), row as Row),
                })
                .collect();
            (Cow::Owned(starts), Cow::Owned(arena))
        };
        let extra =
            self.extra.iter().flat_map(|(&row, more)| more.iter().map(move |v| (row, &**v))).collect();
        TextImage { starts, arena, index: self.index.slots(), extra }
    }

    /// Takes back an image from [`image`](Self::image) (`index`: its slots,
    /// or `None` to rebuild the index from the values). Checks, in one pass
    /// over the arena, that the values follow each other in row order, that
    /// each lies whole inside the arena and is UTF-8; that the index holds
    /// exactly the rows with a value; and that further values belong to rows
    /// with a first value. A failure names the row or slot.
    pub fn from_image(
        starts: Vec<u32>,
        arena: Vec<u8>,
        index: Option<Vec<u32>>,
        extra: Vec<(Row, String)>,
        stamps: Stamps,
    ) -> Result<Self, String> {
        // Lengths below 128 encode as one byte under 0x80, so an all-ASCII
        // arena is made of ASCII values: one vectorised test replaces a
        // UTF-8 check per value.
        let ascii = arena.is_ascii();
        let present = walk_arena(&starts, arena.len(), "value", "bytes", |row, pos| {
            let (len, header) = read_len(&arena[pos..]).ok_or_else(|| {
                format!("row {row}: bad value length at arena offset {pos} of {}", arena.len())
            })?;
            let begin = pos + header;
            let end = begin.checked_add(len).filter(|&e| e <= arena.len()).ok_or_else(|| {
                format!(
                    "row {row}: value of {len} bytes at arena offset {pos} runs past the {} bytes",
                    arena.len()
                )
            })?;
            if !ascii && std::str::from_utf8(&arena[begin..end]).is_err() {
                return Err(format!("row {row}: value at arena offset {pos} is not UTF-8"));
            }
            Ok(end)
        })?;
        let index = match index {
            Some(slots) => RowTable::from_slots(slots, &present).map_err(|e| format!("index: {e}"))?,
            None => {
                let mut table = RowTable::with_capacity(present.len() as usize);
                for row in &present {
                    let value = value_at(&arena, starts[row as usize]);
                    table.insert(hash_of(value), row, |r| hash_of(value_at(&arena, starts[r as usize])));
                }
                table
            }
        };
        let mut col =
            TextColumn { starts, arena, garbage: 0, index, present, stamps, ..TextColumn::default() };
        for (row, value) in extra {
            if col.first(row).is_none() {
                return Err(format!("row {row}: a further value {value:?} but no first value"));
            }
            col.add(row, &value);
        }
        Ok(col)
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
        self.index.shrink_to_fit(|r| hash_of(value_at(arena, starts[r as usize])));
        self.stamps.shrink_to_fit();
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4
            + self.arena.capacity()
            + self.index.heap_bytes()
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

    /// Loads `t`'s image back (with its index image, or rebuilding it).
    fn reload(t: &TextColumn, keep_index: bool) -> Result<TextColumn, String> {
        let image = t.image();
        let extra = image.extra.iter().map(|(r, v)| (*r, v.to_string())).collect();
        let index = keep_index.then(|| image.index.to_vec());
        TextColumn::from_image(image.starts.to_vec(), image.arena.to_vec(), index, extra, Stamps::default())
    }

    #[test]
    fn images_reload_to_the_same_column() {
        let mut t = TextColumn::default();
        // Out of row order, with garbage, further values, an empty string,
        // a shared value, a non-ASCII value and one longer than 127 bytes.
        t.put(9, Some("nine"));
        t.put(2, Some("two"));
        t.put(2, Some("deux"));
        t.add(2, "zwei");
        t.add(2, "dos");
        t.put(4, Some(""));
        t.put(5, Some("deux"));
        t.put(6, Some("été"));
        t.put(7, Some(&"long".repeat(40)));
        t.put(3, Some("gone"));
        t.clear(3);
        for keep_index in [true, false] {
            let back = reload(&t, keep_index).unwrap();
            back.validate().unwrap();
            for row in 0..12 {
                assert_eq!(back.values(row), t.values(row), "row {row}");
            }
            for v in ["nine", "deux", "zwei", "dos", "", "été", "gone", "two", &"long".repeat(40)] {
                assert_eq!(back.rows_of(v), t.rows_of(v), "{v:?}");
            }
            assert_eq!(back.present, t.present);
            assert_eq!(back.garbage, 0, "the image is compact");
        }
        // A compact, ordered arena is written as it is.
        let mut ordered = TextColumn::default();
        ordered.put(0, Some("a"));
        ordered.put(3, Some("b"));
        assert!(matches!(ordered.image().arena, Cow::Borrowed(_)));
        assert!(matches!(t.image().arena, Cow::Owned(_)));
        assert_eq!(reload(&TextColumn::default(), true).unwrap().row_bound(), 0);
    }

    #[test]
    fn bad_images_are_refused() {
        let mut t = TextColumn::default();
        t.put(0, Some("a@x"));
        t.put(1, Some("b@x"));
        t.put(3, Some("c@x"));
        let image = t.image();
        let (starts, arena, index) = (image.starts.to_vec(), image.arena.to_vec(), image.index.to_vec());
        let load = |starts: Vec<u32>, arena: Vec<u8>, index: Vec<u32>, extra: Vec<(Row, String)>| {
            TextColumn::from_image(starts, arena, Some(index), extra, Stamps::default()).map(|_| ())
        };
        assert!(load(starts.clone(), arena.clone(), index.clone(), vec![]).is_ok());

        let mut past = starts.clone();
        past[3] = 1_000;
        let err = load(past, arena.clone(), index.clone(), vec![]).unwrap_err();
        assert!(err.contains("row 3"), "{err}");

        let err = load(starts.clone(), arena[..arena.len() - 1].to_vec(), index.clone(), vec![]).unwrap_err();
        assert!(err.contains("runs past"), "{err}");

        let mut longer = arena.clone();
        longer.push(0);
        let err = load(starts.clone(), longer, index.clone(), vec![]).unwrap_err();
        assert!(err.contains("after the last value"), "{err}");

        let mut not_utf8 = arena.clone();
        not_utf8[1] = 0xff;
        let err = load(starts.clone(), not_utf8, index.clone(), vec![]).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");

        let mut overlong = arena.clone();
        overlong[0] = 0x80;
        let err = load(starts.clone(), overlong, index.clone(), vec![]).unwrap_err();
        assert!(err.contains("row 0"), "{err}");

        let mut stray = index.clone();
        let free = stray.iter().position(|&r| r == u32::MAX).unwrap();
        stray[free] = 2;
        let err = load(starts.clone(), arena.clone(), stray, vec![]).unwrap_err();
        assert!(err.contains("index"), "{err}");

        let err = load(starts.clone(), arena.clone(), index.clone(), vec![(2, "z".into())]).unwrap_err();
        assert!(err.contains("no first value"), "{err}");
        let err = load(starts, arena, index, vec![(70, "z".into())]).unwrap_err();
        assert!(err.contains("row 70"), "{err}");
    }

    #[test]
    fn the_hash_is_fixed() {
        // Snapshots store tables laid out by this hash: it must not move.
        assert_eq!(hash_of(""), 0x42f6_2ae2_dc25_e732, "{:#x}", hash_of(""));
        assert_eq!(hash_of("u1@example.com"), 0x6b78_963d_1d62_5741, "{:#x}", hash_of("u1@example.com"));
    }
}
