//! The event store: per event name, day partitions of columns plus bucketed
//! "who did it" bitmaps.
//!
//! Layout of one [`EventTable`] (one per event name):
//!
//! - `partitions`: one [`Partition`] per UTC day, holding the events of that
//!   day as columns (row, timestamp, one typed column per property) and the
//!   bitmap of rows that have an event that day.
//! - `levels`: coarser who-did-it bitmaps over aligned buckets of 4, 16 and
//!   64 days, so that a 30-day window is a handful of bitmaps; the two edge
//!   days of a window are refined by reading their timestamps.
//!
//! Appending an event adds its row to five who-did-it bitmaps (its day,
//! three buckets, the table). Inserted one by one, at random rows, those
//! inserts were the largest cost of ingest (binary searches in cold array
//! containers). So [`EventTable::append`] only stages `(day, row)`, and
//! [`EventTable::flush_who`] adds many rows to each bitmap at once, sorted,
//! so that the rows bound for one container arrive together. A table
//! flushes once it holds [`STAGE_FLUSH_ROWS`] staged rows (the shard checks
//! at the end of every applied entry), when its applier has been idle a
//! moment, and before a snapshot or a profile's removal.
//!
//! Staged rows are part of the table for every reader: the partitions'
//! `rows` already hold them, and each read of a who-did-it bitmap also
//! looks at the staged list ([`EventTable::has_row`],
//! [`EventTable::day_has_row`], the windows). A reader never flushes: it
//! holds the shard's read lock, and flushing under the write lock on a
//! read's behalf made counts during an ingest wait for it.
//!
//! A behaviour with a `WHERE` clause or a frequency other than "at least
//! once" scans the partitions inside the window column by column: each
//! property test produces a bit mask over the partition's events, masks are
//! combined word by word, and matching events are counted per row.

use std::collections::BTreeMap;

use ahash::AHashMap;
use roaring::RoaringBitmap;

use super::columns::{retain_marked, CodeVec, Dict, NO_CODE};
use super::Row;
use crate::model::{num_key, time_key, TraitType, Value};
use crate::segment::{Cond, Field, LeafTest};

/// Staged rows at which a table flushes them into its who-did-it bitmaps.
/// Larger batches put more rows into each container per visit; a reader
/// scans the staged list of the tables it reads, so it stays short.
pub const STAGE_FLUSH_ROWS: usize = 8192;

/// Milliseconds in a day: the partition width.
pub const DAY_MS: i64 = 86_400_000;

/// Widths, in days, of the coarse bucket levels above day partitions.
pub const LEVEL_DAYS: [i64; 3] = [4, 16, 64];

/// The day (partition number) of a timestamp.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// A property column inside one partition. Absent values: [`NO_CODE`] for
/// codes, `None`-like sentinels documented per variant.
#[derive(Clone, Debug)]
pub enum PropColumn {
    /// Keyword or text: dictionary code per event ([`NO_CODE`] when absent).
    Codes(CodeVec),
    /// Number or timestamp: order key per event, with a presence mask.
    Keys {
        /// Key per event.
        keys: Vec<u64>,
        /// Presence, one bit per event.
        present: Vec<u64>,
    },
    /// Bool: 0 false, 1 true, 2 absent.
    Bools(Vec<u8>),
    /// List: sorted element codes per event (`None` when absent).
    Lists(Vec<Option<Box<[u32]>>>),
}

impl PropColumn {
    fn new(ty: TraitType, len: usize) -> PropColumn {
        match ty {
            TraitType::Keyword | TraitType::Text => PropColumn::Codes(CodeVec::absent(len)),
            TraitType::Number | TraitType::Timestamp => {
                PropColumn::Keys { keys: vec![0; len], present: vec![0; len.div_ceil(64)] }
            }
            TraitType::Bool => PropColumn::Bools(vec![2; len]),
            TraitType::List => PropColumn::Lists(vec![None; len]),
        }
    }

    fn push(&mut self, value: Option<&Value>, dict: &mut Dict) {
        match self {
            PropColumn::Codes(codes) => codes.push(match value {
                Some(Value::Keyword(s) | Value::Text(s)) => dict.intern(s),
                _ => NO_CODE,
            }),
            PropColumn::Keys { keys, present } => {
                let i = keys.len();
                if i % 64 == 0 {
                    present.push(0);
                }
                let key = match value {
                    Some(Value::Number(x)) => Some(num_key(*x)),
                    Some(Value::Timestamp(t)) => Some(time_key(*t)),
                    _ => None,
                };
                keys.push(key.unwrap_or(0));
                if key.is_some() {
                    present[i / 64] |= 1 << (i % 64);
                }
            }
            PropColumn::Bools(v) => v.push(match value {
                Some(Value::Bool(b)) => u8::from(*b),
                _ => 2,
            }),
            PropColumn::Lists(v) => v.push(match value {
                Some(Value::List(items)) => {
                    let mut codes: Vec<u32> = items.iter().map(|s| dict.intern(s)).collect();
                    codes.sort_unstable();
                    codes.dedup();
                    Some(codes.into_boxed_slice())
                }
                _ => None,
            }),
        }
    }

    fn len(&self) -> usize {
        match self {
            PropColumn::Codes(v) => v.len(),
            PropColumn::Keys { keys, .. } => keys.len(),
            PropColumn::Bools(v) => v.len(),
            PropColumn::Lists(v) => v.len(),
        }
    }

    /// Keeps only the events whose index `keep` says to keep.
    fn retain(&mut self, keep: &[bool]) {
        match self {
            PropColumn::Codes(v) => v.retain(keep),
            PropColumn::Bools(v) => retain_marked(v, keep),
            PropColumn::Lists(v) => retain_marked(v, keep),
            PropColumn::Keys { keys, present } => {
                let mut new_keys = Vec::with_capacity(keys.len());
                let mut new_present = Vec::new();
                for (i, &k) in keys.iter().enumerate() {
                    if !keep[i] {
                        continue;
                    }
                    let j = new_keys.len();
                    if j % 64 == 0 {
                        new_present.push(0);
                    }
                    if present[i / 64] >> (i % 64) & 1 == 1 {
                        new_present[j / 64] |= 1 << (j % 64);
                    }
                    new_keys.push(k);
                }
                *keys = new_keys;
                *present = new_present;
            }
        }
    }

    fn shrink_to_fit(&mut self) {
        match self {
            PropColumn::Codes(v) => v.shrink_to_fit(),
            PropColumn::Keys { keys, present } => {
                keys.shrink_to_fit();
                present.shrink_to_fit();
            }
            PropColumn::Bools(v) => v.shrink_to_fit(),
            PropColumn::Lists(v) => v.shrink_to_fit(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            PropColumn::Codes(v) => v.heap_bytes(),
            PropColumn::Keys { keys, present } => keys.capacity() * 8 + present.capacity() * 8,
            PropColumn::Bools(v) => v.capacity(),
            PropColumn::Lists(v) => {
                v.capacity() * 16 + v.iter().flatten().map(|c| c.len() * 4).sum::<usize>()
            }
        }
    }
}

/// The events of one name on one day.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    /// Row of each event.
    pub rows: Vec<Row>,
    /// Milliseconds since the start of the day of each event (fits in u32).
    pub offsets: Vec<u32>,
    /// Property columns, by the table's property index. A partition written
    /// before a property first appeared has fewer columns: a missing column
    /// means the property is absent from every event of the partition.
    pub props: Vec<PropColumn>,
    /// Rows with at least one event here.
    pub who: RoaringBitmap,
}

impl Partition {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the partition holds no event.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The events of one name.
#[derive(Clone, Debug, Default)]
pub struct EventTable {
    /// Property names and types, by property index.
    pub props: Vec<(String, TraitType)>,
    /// Property index by name.
    pub prop_index: AHashMap<String, usize>,
    /// Dictionary per property (used by keyword, text and list properties).
    pub dicts: Vec<Dict>,
    /// Day partitions by day number.
    pub partitions: BTreeMap<i64, Partition>,
    /// Who-did-it bitmaps per coarse bucket, one map per [`LEVEL_DAYS`] width.
    pub levels: [BTreeMap<i64, RoaringBitmap>; 3],
    /// Rows with at least one event of this name.
    pub who: RoaringBitmap,
    /// Number of events.
    pub total: u64,
    /// `(day, row)` of events appended since the last
    /// [`flush_who`](EventTable::flush_who): not yet in `partitions[day].who`,
    /// `levels` and `who`.
    staged_who: Vec<(i64, Row)>,
}

/// A window decomposed by [`EventTable::cover`].
#[derive(Default)]
struct Cover<'a> {
    /// Who-did-it bitmaps of the days the window covers whole.
    bitmaps: Vec<&'a RoaringBitmap>,
    /// Days the window covers in part.
    edges: Vec<i64>,
    /// First and last of the days covered whole, if any.
    whole_days: Option<(i64, i64)>,
}

/// Adds `rows` (sorted, no duplicates) to `bitmap`. A union rewrites
/// every array container it touches, so a few rows into a large bitmap are
/// inserted one by one instead (in order, so the searches stay in cache).
fn union_sorted(bitmap: &mut RoaringBitmap, rows: &[Row]) {
    if rows.len() > 4 && (rows.len() as u64) * 64 >= bitmap.len() {
        // Strictly increasing by construction, so the build cannot fail;
        // were it to, the rows are inserted one by one below, never lost.
        if let Ok(add) = RoaringBitmap::from_sorted_iter(rows.iter().copied()) {
            *bitmap |= add;
            return;
        }
    }
    for &row in rows {
        bitmap.insert(row);
    }
}

/// One event as stored and read back.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    /// The event name.
    pub name: String,
    /// Its time, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Its properties, sorted by name.
    pub properties: Vec<(String, Value)>,
}

impl EventTable {
    /// The index of a property, creating it with type `ty` when new. Returns
    /// `None` if the property exists with another type.
    fn prop(&mut self, name: &str, ty: TraitType) -> Option<usize> {
        if let Some(&i) = self.prop_index.get(name) {
            return (self.props[i].1 == ty).then_some(i);
        }
        let i = self.props.len();
        self.props.push((name.to_string(), ty));
        self.prop_index.insert(name.to_string(), i);
        self.dicts.push(Dict::default());
        Some(i)
    }

    /// True when appended events wait for [`flush_who`](EventTable::flush_who).
    pub fn has_staged(&self) -> bool {
        !self.staged_who.is_empty()
    }

    /// Number of appended events waiting for [`flush_who`](EventTable::flush_who).
    pub fn staged_len(&self) -> usize {
        self.staged_who.len()
    }

    /// True when `row` has at least one event of this name (flushed or staged).
    pub fn has_row(&self, row: Row) -> bool {
        self.who.contains(row) || self.staged_who.iter().any(|&(_, r)| r == row)
    }

    /// True when `row` has an event in `part`, the partition of `day`
    /// (flushed or staged).
    pub fn day_has_row(&self, day: i64, part: &Partition, row: Row) -> bool {
        part.who.contains(row) || self.staged_who.iter().any(|&(d, r)| d == day && r == row)
    }

    /// Rows staged for the days `from_day..=to_day`.
    fn staged_between(&self, from_day: i64, to_day: i64) -> RoaringBitmap {
        let mut rows: Vec<Row> =
            self.staged_who.iter().filter(|(d, _)| from_day <= *d && *d <= to_day).map(|&(_, r)| r).collect();
        rows.sort_unstable();
        rows.dedup();
        // Sorted and deduplicated just above, so the build cannot fail.
        RoaringBitmap::from_sorted_iter(rows).unwrap_or_default()
    }

    /// Adds the rows of the events appended since the last flush to the
    /// who-did-it bitmaps: per bitmap, the new rows sorted, then added with
    /// [`union_sorted`].
    pub fn flush_who(&mut self) {
        if self.staged_who.is_empty() {
            return;
        }
        let mut staged = std::mem::take(&mut self.staged_who);
        staged.sort_unstable();
        staged.dedup();
        let mut rows: Vec<Row> = Vec::with_capacity(staged.len());
        for day_run in staged.chunk_by(|a, b| a.0 == b.0) {
            rows.clear();
            rows.extend(day_run.iter().map(|&(_, row)| row));
            if let Some(part) = self.partitions.get_mut(&day_run[0].0) {
                union_sorted(&mut part.who, &rows);
            }
        }
        // Buckets are runs of days (the days are sorted), but their rows
        // come from several days: sort each bucket's rows again.
        for (level, width) in LEVEL_DAYS.iter().enumerate() {
            for bucket_run in staged.chunk_by(|a, b| a.0.div_euclid(*width) == b.0.div_euclid(*width)) {
                rows.clear();
                rows.extend(bucket_run.iter().map(|&(_, row)| row));
                rows.sort_unstable();
                rows.dedup();
                union_sorted(
                    self.levels[level].entry(bucket_run[0].0.div_euclid(*width)).or_default(),
                    &rows,
                );
            }
        }
        rows.clear();
        rows.extend(staged.iter().map(|&(_, row)| row));
        rows.sort_unstable();
        rows.dedup();
        union_sorted(&mut self.who, &rows);
        // Keep the allocation for the next batch.
        staged.clear();
        self.staged_who = staged;
    }

    /// Appends an event; its row reaches the who-did-it bitmaps at the next
    /// [`flush_who`](EventTable::flush_who) and is read from the staged list
    /// until then. Properties whose type differs
    /// from the one this table holds are returned, not stored.
    pub fn append(&mut self, row: Row, ts_ms: i64, properties: &[(String, Value)]) -> Vec<String> {
        let mut rejected = Vec::new();
        // Property index per value (usize::MAX: refused); on the stack for
        // the usual few properties.
        let mut index = [usize::MAX; 8];
        let mut spilled = Vec::new();
        for (k, (name, value)) in properties.iter().enumerate() {
            let i = match self.prop(name, value.trait_type()) {
                Some(i) => i,
                None => {
                    rejected.push(name.clone());
                    usize::MAX
                }
            };
            match index.get_mut(k) {
                Some(slot) => *slot = i,
                None => spilled.push(i),
            }
        }
        let index_of = |k: usize| index.get(k).copied().unwrap_or_else(|| spilled[k - index.len()]);
        let day = day_of(ts_ms);
        let part = self.partitions.entry(day).or_default();
        let n = part.rows.len();
        part.rows.push(row);
        part.offsets.push((ts_ms - day * DAY_MS) as u32);
        self.staged_who.push((day, row));
        for (i, (_, ty)) in self.props.iter().enumerate() {
            if part.props.len() <= i {
                part.props.push(PropColumn::new(*ty, n));
            }
            let value = (0..properties.len()).find(|&k| index_of(k) == i).map(|k| &properties[k].1);
            part.props[i].push(value, &mut self.dicts[i]);
        }
        self.total += 1;
        rejected
    }

    /// Removes every event of `row`, returning them.
    pub fn remove_row(&mut self, name: &str, row: Row) -> Vec<EventRecord> {
        self.flush_who();
        if !self.who.remove(row) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let days: Vec<i64> =
            self.partitions.iter().filter(|(_, p)| p.who.contains(row)).map(|(d, _)| *d).collect();
        for day in days {
            let Some(part) = self.partitions.get_mut(&day) else { continue };
            let keep: Vec<bool> = part.rows.iter().map(|&r| r != row).collect();
            for (i, _) in keep.iter().enumerate().filter(|(_, k)| !**k) {
                out.push(read_event(name, &self.props, &self.dicts, part, day, i));
            }
            retain_marked(&mut part.rows, &keep);
            retain_marked(&mut part.offsets, &keep);
            for col in &mut part.props {
                col.retain(&keep);
            }
            part.who.remove(row);
            self.total -= keep.iter().filter(|k| !**k).count() as u64;
            if part.is_empty() {
                self.partitions.remove(&day);
            }
        }
        for level in &mut self.levels {
            level.retain(|_, bm| {
                bm.remove(row);
                !bm.is_empty()
            });
        }
        out
    }

    /// Every event of `row`, in time order.
    pub fn events_of(&self, name: &str, row: Row) -> Vec<EventRecord> {
        let mut out = Vec::new();
        if !self.has_row(row) {
            return out;
        }
        for (day, part) in &self.partitions {
            if !self.day_has_row(*day, part, row) {
                continue;
            }
            for (i, &r) in part.rows.iter().enumerate() {
                if r == row {
                    out.push(read_event(name, &self.props, &self.dicts, part, *day, i));
                }
            }
        }
        out.sort_by_key(|e| e.ts_ms);
        out
    }

    /// Checks partitions, columns and every who-did-it bitmap against the rows.
    /// Staged rows are checked as if flushed (on a copy).
    pub fn validate(&self) -> Result<(), String> {
        if self.has_staged() {
            if let Some((day, row)) = self
                .staged_who
                .iter()
                .find(|(d, r)| self.partitions.get(d).is_none_or(|p| !p.rows.contains(r)))
            {
                return Err(format!("day {day}: staged row {row} has no event there"));
            }
            let mut flushed = self.clone();
            flushed.flush_who();
            return flushed.validate();
        }
        let mut who = RoaringBitmap::new();
        let mut levels: [BTreeMap<i64, RoaringBitmap>; 3] = Default::default();
        let mut total = 0u64;
        for (day, part) in &self.partitions {
            if part.is_empty() {
                return Err(format!("day {day}: empty partition kept"));
            }
            if part.offsets.len() != part.rows.len() {
                return Err(format!("day {day}: offsets and rows differ in length"));
            }
            if part.offsets.iter().any(|&o| i64::from(o) >= DAY_MS) {
                return Err(format!("day {day}: an offset is outside the day"));
            }
            if part.props.len() > self.props.len() {
                return Err(format!(
                    "day {day}: {} columns for {} properties",
                    part.props.len(),
                    self.props.len()
                ));
            }
            if let Some(c) = part.props.iter().find(|c| c.len() != part.rows.len()) {
                return Err(format!("day {day}: a column has {} events, rows {}", c.len(), part.rows.len()));
            }
            let rows: RoaringBitmap = part.rows.iter().copied().collect();
            if rows != part.who {
                return Err(format!("day {day}: who-did-it bitmap differs from the rows"));
            }
            for (level, width) in LEVEL_DAYS.iter().enumerate() {
                *levels[level].entry(day.div_euclid(*width)).or_default() |= &rows;
            }
            who |= rows;
            total += part.rows.len() as u64;
        }
        if who != self.who {
            return Err("table who-did-it bitmap differs from the partitions".to_string());
        }
        if levels != self.levels {
            return Err("coarse bucket bitmaps differ from the partitions".to_string());
        }
        if total != self.total {
            return Err(format!("total {} but {total} events stored", self.total));
        }
        Ok(())
    }

    /// Gives back spare capacity of every partition.
    pub fn shrink_to_fit(&mut self) {
        for part in self.partitions.values_mut() {
            part.rows.shrink_to_fit();
            part.offsets.shrink_to_fit();
            part.props.iter_mut().for_each(PropColumn::shrink_to_fit);
        }
    }

    /// Heap bytes used, approximately.
    pub fn heap_bytes(&self) -> usize {
        let parts: usize = self
            .partitions
            .values()
            .map(|p| {
                p.rows.capacity() * 4
                    + p.offsets.capacity() * 4
                    + p.props.iter().map(PropColumn::heap_bytes).sum::<usize>()
                    + p.who.serialized_size()
                    + 64
            })
            .sum();
        let levels: usize =
            self.levels.iter().flat_map(|l| l.values()).map(RoaringBitmap::serialized_size).sum();
        parts + levels + self.who.serialized_size() + self.dicts.iter().map(Dict::heap_bytes).sum::<usize>()
    }

    // ----- evaluation -------------------------------------------------------

    /// Decomposes the window `from..=to` into the who-did-it bitmaps of the
    /// days it covers whole (taking, at each step, the widest aligned bucket
    /// that fits), the at most two days it covers in part, and the range of
    /// whole days, whose staged rows the bitmaps do not hold yet.
    fn cover(&self, from: i64, to: i64) -> Cover<'_> {
        let (Some((&first_day, _)), Some((&last_day, _))) =
            (self.partitions.first_key_value(), self.partitions.last_key_value())
        else {
            return Cover::default();
        };
        let from_day = day_of(from).max(first_day);
        let to_day = day_of(to).min(last_day);
        if from > to || from_day > to_day {
            return Cover::default();
        }
        // Days wholly inside the window, clamped to the days that exist.
        let full_from = if from <= first_day * DAY_MS { first_day } else { day_of(from - 1) + 1 };
        let full_to = if to >= (last_day + 1) * DAY_MS - 1 { last_day } else { day_of(to + 1) - 1 };
        let mut edges = Vec::with_capacity(2);
        if from_day < full_from {
            edges.push(from_day);
        }
        if to_day > full_to && !edges.contains(&to_day) {
            edges.push(to_day);
        }
        let mut bitmaps = Vec::new();
        let mut d = full_from;
        while d <= full_to {
            // Days with no partition add nothing (a bucket is the union of
            // its days): go to the next day that has one, so that the walk
            // is bounded by the partitions, not by the window's width (a
            // window over centuries, or days far apart in a damaged
            // snapshot, took minutes).
            match self.partitions.range(d..=full_to).next() {
                Some((&next, _)) => d = next,
                None => break,
            }
            let mut step = 1;
            let mut bitmap = self.partitions.get(&d).map(|p| &p.who);
            for (level, width) in LEVEL_DAYS.iter().enumerate() {
                if d.rem_euclid(*width) == 0 && d + width - 1 <= full_to {
                    step = *width;
                    bitmap = self.levels[level].get(&d.div_euclid(*width));
                } else {
                    break;
                }
            }
            bitmaps.extend(bitmap);
            d += step;
        }
        let whole_days = (full_from <= full_to).then_some((full_from, full_to));
        Cover { bitmaps, edges, whole_days }
    }

    /// The events of an edge day that fall in `from..=to`, as (event index, row).
    fn edge_events(&self, day: i64, from: i64, to: i64) -> impl Iterator<Item = Row> + '_ {
        let base = day * DAY_MS;
        self.partitions.get(&day).into_iter().flat_map(move |part| {
            part.offsets.iter().zip(&part.rows).filter_map(move |(&off, &row)| {
                let ts = base + i64::from(off);
                (from <= ts && ts <= to).then_some(row)
            })
        })
    }

    /// Rows with at least one event in `from..=to` (no filter): the union of
    /// the window's whole-day bitmaps, plus the rows of the edge days' events
    /// that fall inside it.
    pub fn who_in_window(&self, from: i64, to: i64) -> RoaringBitmap {
        let Cover { bitmaps, edges, whole_days } = self.cover(from, to);
        let mut out = roaring::MultiOps::union(bitmaps.into_iter());
        if let (Some((a, b)), true) = (whole_days, self.has_staged()) {
            out |= self.staged_between(a, b);
        }
        for day in edges {
            out.extend(self.edge_events(day, from, to));
        }
        out
    }

    /// True when `row` has an event in `from..=to`: whole days answer from
    /// their bitmaps, and only the edge days where the row has events are
    /// scanned.
    pub fn did_in_window(&self, row: Row, from: i64, to: i64) -> bool {
        let Cover { bitmaps, edges, whole_days } = self.cover(from, to);
        bitmaps.iter().any(|b| b.contains(row))
            || whole_days
                .is_some_and(|(a, b)| self.staged_who.iter().any(|&(d, r)| r == row && a <= d && d <= b))
            || edges.into_iter().any(|day| {
                self.partitions.get(&day).is_some_and(|p| self.day_has_row(day, p, row))
                    && self.edge_events(day, from, to).any(|r| r == row)
            })
    }

    /// The partitions that may hold events in `from..=to`.
    pub fn partitions_in(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, &Partition)> {
        // `BTreeMap::range` panics on a reversed range: an empty window
        // yields no partition instead.
        let days = (from <= to).then(|| day_of(from)..=day_of(to));
        days.into_iter().flat_map(move |r| self.partitions.range(r)).map(|(d, p)| (*d, p))
    }

    /// Bit mask over `part`'s events that are in `from..=to` and satisfy
    /// `filter`. Returns the mask as 64-bit words.
    pub fn match_mask(
        &self,
        day: i64,
        part: &Partition,
        from: i64,
        to: i64,
        filter: Option<&Cond>,
    ) -> Vec<u64> {
        let n = part.len();
        let base = day * DAY_MS;
        let lo = from.saturating_sub(base);
        let hi = to.saturating_sub(base);
        let whole_day = lo <= 0 && hi >= DAY_MS - 1;
        if let (true, Some(f)) = (whole_day, filter) {
            return self.filter_mask(part, f);
        }
        let mut mask = vec![0u64; n.div_ceil(64)];
        if whole_day {
            fill(&mut mask, n);
        } else {
            for (i, &off) in part.offsets.iter().enumerate() {
                let off = i64::from(off);
                if lo <= off && off <= hi {
                    mask[i / 64] |= 1 << (i % 64);
                }
            }
        }
        if let Some(f) = filter {
            let fm = self.filter_mask(part, f);
            for (m, f) in mask.iter_mut().zip(fm) {
                *m &= f;
            }
        }
        mask
    }

    /// Bit mask of the events of `part` that satisfy a property condition.
    fn filter_mask(&self, part: &Partition, cond: &Cond) -> Vec<u64> {
        let n = part.len();
        let words = n.div_ceil(64);
        match cond {
            Cond::All => {
                let mut m = vec![0u64; words];
                fill(&mut m, n);
                m
            }
            Cond::Empty => vec![0u64; words],
            Cond::Not(inner) => {
                let mut m = self.filter_mask(part, inner);
                for w in &mut m {
                    *w = !*w;
                }
                trim(&mut m, n);
                m
            }
            Cond::And(items) => {
                let mut m = vec![u64::MAX; words];
                trim(&mut m, n);
                for item in items {
                    let x = self.filter_mask(part, item);
                    let mut any = 0;
                    for (a, b) in m.iter_mut().zip(x) {
                        *a &= b;
                        any |= *a;
                    }
                    if any == 0 {
                        break;
                    }
                }
                m
            }
            Cond::Or(items) => {
                let mut m = vec![0u64; words];
                for item in items {
                    for (a, b) in m.iter_mut().zip(self.filter_mask(part, item)) {
                        *a |= b;
                    }
                }
                m
            }
            Cond::Leaf(leaf) => self.leaf_mask(part, &leaf.field, &leaf.test),
            // The checker never puts a behaviour or a saved segment inside
            // a filter.
            Cond::Did(_) | Cond::Segment(_) => vec![0u64; words],
        }
    }

    fn leaf_mask(&self, part: &Partition, field: &Field, test: &LeafTest) -> Vec<u64> {
        let n = part.len();
        let mut m = vec![0u64; n.div_ceil(64)];
        let Field::Trait { name, ty } = field else { return m };
        let Some(&pi) = self.prop_index.get(name.as_str()) else { return m };
        if self.props[pi].1 != *ty {
            return m;
        }
        let Some(column) = part.props.get(pi) else { return m };
        let dict = &self.dicts[pi];
        let mut set = |i: usize| m[i / 64] |= 1 << (i % 64);
        match (column, test) {
            (PropColumn::Codes(codes), LeafTest::Exists) => return codes.mask_in(&[], true),
            (PropColumn::Codes(codes), LeafTest::StrIn(values)) => {
                let wanted: Vec<u32> = values.iter().filter_map(|v| dict.code(v)).collect();
                if !wanted.is_empty() {
                    return codes.mask_in(&wanted, false);
                }
            }
            (PropColumn::Codes(codes), LeafTest::StrNotIn(values)) => {
                let unwanted: Vec<u32> = values.iter().filter_map(|v| dict.code(v)).collect();
                return codes.mask_in(&unwanted, true);
            }
            (PropColumn::Keys { keys, present }, test) => {
                // `NotEq(k)` is the two ranges around k; `Exists` is everything.
                let (lo, hi, hole) = match test {
                    LeafTest::Exists => (0, u64::MAX, None),
                    LeafTest::Range { lo, hi } => (*lo, *hi, None),
                    LeafTest::NotEq(k) => (0, u64::MAX, Some(*k)),
                    _ => return m,
                };
                let hole = hole.unwrap_or(u64::MAX);
                let hole_matters = matches!(test, LeafTest::NotEq(_));
                // 64 keys per output word, branch-free so that it vectorises.
                for ((word, chunk), p) in m.iter_mut().zip(keys.chunks(64)).zip(present) {
                    let mut w = 0u64;
                    for (j, &k) in chunk.iter().enumerate() {
                        let hit = (lo <= k) & (k <= hi) & (!hole_matters | (k != hole));
                        w |= u64::from(hit) << j;
                    }
                    *word = w & p;
                }
            }
            (PropColumn::Bools(v), LeafTest::Exists) => {
                v.iter().enumerate().filter(|(_, &b)| b != 2).for_each(|(i, _)| set(i))
            }
            (PropColumn::Bools(v), LeafTest::Bool(want)) => {
                let want = u8::from(*want);
                v.iter().enumerate().filter(|(_, &b)| b == want).for_each(|(i, _)| set(i))
            }
            (PropColumn::Lists(v), LeafTest::Exists) => {
                v.iter().enumerate().filter(|(_, l)| l.is_some()).for_each(|(i, _)| set(i))
            }
            (PropColumn::Lists(v), LeafTest::Contains(element)) => {
                if let Some(code) = dict.code(element) {
                    v.iter()
                        .enumerate()
                        .filter(|(_, l)| l.as_ref().is_some_and(|l| l.binary_search(&code).is_ok()))
                        .for_each(|(i, _)| set(i))
                }
            }
            _ => {}
        }
        m
    }
}

fn fill(mask: &mut [u64], n: usize) {
    for w in mask.iter_mut() {
        *w = u64::MAX;
    }
    trim(mask, n);
}

fn trim(mask: &mut [u64], n: usize) {
    if n % 64 != 0 {
        if let Some(last) = mask.last_mut() {
            *last &= (1u64 << (n % 64)) - 1;
        }
    }
}

fn read_event(
    name: &str,
    props: &[(String, TraitType)],
    dicts: &[Dict],
    part: &Partition,
    day: i64,
    i: usize,
) -> EventRecord {
    let mut properties = Vec::new();
    for ((pname, ty), (column, dict)) in props.iter().zip(part.props.iter().zip(dicts)) {
        let value = match column {
            PropColumn::Codes(c) if c.get(i) != NO_CODE => {
                let s = dict.value(c.get(i)).to_string();
                Some(if *ty == TraitType::Text { Value::Text(s) } else { Value::Keyword(s) })
            }
            PropColumn::Keys { keys, present } if present[i / 64] >> (i % 64) & 1 == 1 => {
                Some(if *ty == TraitType::Timestamp {
                    Value::Timestamp(crate::model::key_to_time(keys[i]))
                } else {
                    Value::Number(crate::model::key_to_num(keys[i]))
                })
            }
            PropColumn::Bools(b) if b[i] != 2 => Some(Value::Bool(b[i] == 1)),
            PropColumn::Lists(l) => {
                l[i].as_ref().map(|codes| Value::list(codes.iter().map(|&c| dict.value(c).to_string())))
            }
            _ => None,
        };
        if let Some(v) = value {
            properties.push((pname.clone(), v));
        }
    }
    properties.sort_by(|a, b| a.0.cmp(&b.0));
    EventRecord { name: name.to_string(), ts_ms: day * DAY_MS + i64::from(part.offsets[i]), properties }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    /// Every window read (bitmaps, staged rows, edge days) against a
    /// filter over all appended events.
    fn assert_windows_match(t: &EventTable, all: &[(Row, i64)]) {
        let probes = [
            i64::MIN,
            -3 * DAY_MS,
            -1,
            0,
            1000 * DAY_MS - 1,
            1000 * DAY_MS,
            1000 * DAY_MS + 1,
            1017 * DAY_MS + 5_000,
            1064 * DAY_MS,
            1100 * DAY_MS - 1,
            1199 * DAY_MS + 1,
            1300 * DAY_MS,
            i64::MAX,
        ];
        for &from in &probes {
            for &to in &probes {
                let want: RoaringBitmap =
                    all.iter().filter(|(_, ts)| from <= *ts && *ts <= to).map(|(r, _)| *r).collect();
                assert_eq!(t.who_in_window(from, to), want, "window {from}..={to}");
                for row in [0, 7, 150, 299, 300] {
                    assert_eq!(t.did_in_window(row, from, to), want.contains(row), "row {row} {from}..={to}");
                }
            }
        }
        for row in [0, 7, 150, 299, 300] {
            let mut want: Vec<i64> = all.iter().filter(|(r, _)| *r == row).map(|(_, ts)| *ts).collect();
            want.sort_unstable();
            let got: Vec<i64> = t.events_of("e", row).iter().map(|e| e.ts_ms).collect();
            assert_eq!(got, want, "events of row {row}");
            assert_eq!(t.has_row(row), !want.is_empty(), "row {row}");
        }
    }

    #[test]
    fn windows_match_brute_force_with_and_without_staged_rows() {
        let mut t = EventTable::default();
        let mut all: Vec<(Row, i64)> = Vec::new();
        let mut s = 11u64;
        for i in 0..3_000 {
            let row = (next(&mut s) % 300) as Row;
            // Around day 1000, with some negative and some exact day boundaries.
            let ts = match next(&mut s) % 4 {
                0 => (1000 + (next(&mut s) % 200) as i64) * DAY_MS,
                1 => -(next(&mut s) as i64 % (5 * DAY_MS)),
                _ => 1000 * DAY_MS + (next(&mut s) as i64 % (200 * DAY_MS)),
            };
            t.append(row, ts, &[("amount".to_string(), Value::Number(1.0))]);
            all.push((row, ts));
            // Flushed at uneven intervals, as batches of several sizes are;
            // staged or not, the table reads the same.
            if next(&mut s) % 97 == 0 {
                t.validate().unwrap();
                t.flush_who();
            }
            if i == 1_500 {
                assert!(t.has_staged());
                assert_windows_match(&t, &all);
            }
        }
        assert!(t.has_staged());
        t.validate().unwrap();
        assert_windows_match(&t, &all);
        t.flush_who();
        assert!(!t.has_staged());
        t.validate().unwrap();
        assert_windows_match(&t, &all);
        // Removing a row takes its events everywhere, staged ones too.
        t.append(7, 1003 * DAY_MS, &[]);
        all.push((7, 1003 * DAY_MS));
        let removed = t.remove_row("e", 7);
        assert_eq!(removed.len(), all.iter().filter(|(r, _)| *r == 7).count());
        t.validate().unwrap();
        all.retain(|(r, _)| *r != 7);
        assert_windows_match(&t, &all);
    }

    #[test]
    fn a_staged_row_without_its_event_fails_validation() {
        let mut t = EventTable::default();
        t.append(3, 5 * DAY_MS, &[]);
        t.flush_who();
        t.staged_who.push((5, 4));
        assert!(t.validate().unwrap_err().contains("staged row 4"), "{:?}", t.validate());
    }
}
