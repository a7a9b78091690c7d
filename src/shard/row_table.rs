//! An open-addressing hash table of rows whose memory image is one
//! `Vec<u32>`, so that a snapshot can store it as an array and load it back
//! with a copy instead of one insertion per row.
//!
//! The table stores rows only, never keys: the owner (profile rows, text
//! columns) keeps the keys in its own vectors and passes, on each call, the
//! hash of the key looked up and a function giving the hash of a stored row's
//! key. Linear probing from the slot named by the hash's high bits; removal
//! shifts the following entries back (no tombstones), so a probe ends at the
//! first empty slot and every row whose key has a given hash lies between
//! that hash's home slot and the next empty slot.
//!
//! The load stays at or below 3/4, so an empty slot always exists (a probe
//! terminates) and a lookup reads a few consecutive slots. At 4 bytes a slot
//! the table costs 5.3 to 10.7 bytes per row, against 5.7 to 11.4 for a
//! `hashbrown` table of `u32`.

use roaring::RoaringBitmap;

use super::columns::RowMarks;
use super::Row;

/// Content of an empty slot. No row takes this value: the shard refuses to
/// assign it (`ProfileRows::insert`).
const EMPTY: u32 = u32::MAX;

/// Smallest non-zero number of slots.
const MIN_SLOTS: usize = 8;

/// Rows by the hash of a key held elsewhere. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct RowTable {
    /// A row per slot, [`EMPTY`] when free; length 0 or a power of two.
    slots: Vec<u32>,
    /// Occupied slots.
    len: usize,
}

/// The number of slots that holds `rows` rows at a load of at most 3/4.
fn slots_for(rows: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    let needed = rows.saturating_mul(4).div_ceil(3).max(MIN_SLOTS);
    needed.checked_next_power_of_two().unwrap_or_else(|| panic!("row table of {rows} rows"))
}

impl RowTable {
    /// An empty table with room for `rows` rows without growing.
    pub fn with_capacity(rows: usize) -> Self {
        RowTable { slots: vec![EMPTY; slots_for(rows)], len: 0 }
    }

    /// Number of rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot a key of hash `hash` probes first (the table is not empty).
    fn home(&self, hash: u64) -> usize {
        let bits = self.slots.len().trailing_zeros();
        // The high bits: the multiplicative hashes used here mix best there.
        (hash >> (64 - bits)) as usize
    }

    /// The rows a key of hash `hash` may be stored at: a superset of the
    /// rows whose key has that hash, to be filtered by the caller.
    pub fn candidates(&self, hash: u64) -> impl Iterator<Item = Row> + '_ {
        let mask = self.slots.len().wrapping_sub(1);
        let start = if self.slots.is_empty() { 0 } else { self.home(hash) };
        // The load bound guarantees an empty slot, so the run is shorter
        // than the table; `take` bounds it anyway.
        (0..self.slots.len()).map(move |i| self.slots[(start + i) & mask]).take_while(|&r| r != EMPTY)
    }

    /// The first stored row with hash `hash` for which `eq` holds.
    pub fn find(&self, hash: u64, mut eq: impl FnMut(Row) -> bool) -> Option<Row> {
        self.candidates(hash).find(|&r| eq(r))
    }

    /// Adds `row`, whose key hashes to `hash`; `rehash` gives the hash of a
    /// stored row's key, for growing. The caller ensures the row is not held.
    pub fn insert(&mut self, hash: u64, row: Row, rehash: impl Fn(Row) -> u64) {
        assert!(row != EMPTY, "row {row} cannot be stored in a row table");
        if slots_for(self.len + 1) > self.slots.len() {
            self.resize(slots_for(self.len + 1).max(self.slots.len() * 2), &rehash);
        }
        self.place(hash, row);
        self.len += 1;
    }

    /// Puts `row` in the first free slot from its home (there is one).
    fn place(&mut self, hash: u64, row: Row) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = row;
    }

    /// Rebuilds with `slots` slots.
    fn resize(&mut self, slots: usize, rehash: &impl Fn(Row) -> u64) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; slots]);
        if slots == 0 {
            return;
        }
        for row in old.into_iter().filter(|&r| r != EMPTY) {
            self.place(rehash(row), row);
        }
    }

    /// Removes the first stored row with hash `hash` for which `eq` holds,
    /// shifting back the entries after it; returns whether one was found.
    pub fn remove(
        &mut self,
        hash: u64,
        mut eq: impl FnMut(Row) -> bool,
        rehash: impl Fn(Row) -> u64,
    ) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut hole = self.home(hash);
        loop {
            match self.slots[hole] {
                EMPTY => return false,
                r if eq(r) => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Backward shift: an entry after the hole moves into it unless its
        // home lies cyclically in (hole, j], where the probe still finds it.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let row = self.slots[j];
            if row == EMPTY {
                break;
            }
            let home = self.home(rehash(row));
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = row;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Every stored row, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = Row> + '_ {
        self.slots.iter().copied().filter(|&r| r != EMPTY)
    }

    /// Gives back slots beyond what the rows need.
    pub fn shrink_to_fit(&mut self, rehash: impl Fn(Row) -> u64) {
        let want = slots_for(self.len);
        if want < self.slots.len() {
            self.resize(want, &rehash);
        }
        self.slots.shrink_to_fit();
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 4
    }

    /// The memory image, for snapshots: one row per slot, `u32::MAX` free.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Takes back a memory image from [`slots`](Self::slots), checking that
    /// it can be probed (a power-of-two length, load at most 3/4) and that it
    /// holds each row of `rows` exactly once and nothing else. Placement by
    /// hash is not checked here (that is a rehash of every key, what loading
    /// an image avoids): the image's checksum covers corruption, and
    /// `validate` of the owner checks placement.
    pub fn from_slots(slots: Vec<u32>, rows: &RoaringBitmap) -> Result<Self, String> {
        if !(slots.is_empty() || (slots.len().is_power_of_two() && slots.len() >= MIN_SLOTS)) {
            return Err(format!(
                "row table of {} slots: not a power of two of at least {MIN_SLOTS}",
                slots.len()
            ));
        }
        let bound = rows.max().map_or(0, |m| m as usize + 1);
        let mut seen = RowMarks::new(bound);
        let mut len = 0usize;
        let mut repeated = None;
        for (i, &row) in slots.iter().enumerate().filter(|(_, &r)| r != EMPTY) {
            if row as usize >= bound {
                return Err(format!("row table slot {i} holds row {row}, beyond the rows it indexes"));
            }
            if !seen.mark(row as usize) {
                repeated = Some(row);
            }
            len += 1;
        }
        if let Some(row) = repeated {
            return Err(format!("row table holds row {row} twice"));
        }
        // Distinct rows, as many as `rows` holds, all below its maximum:
        // equality of the two sets is one comparison of bitmaps.
        if len as u64 != rows.len() || seen.into_bitmap() != *rows {
            return Err(format!("row table holds {len} rows, not the {} it indexes", rows.len()));
        }
        if slots_for(len) > slots.len() {
            return Err(format!("row table of {} slots is over-full with {len} rows", slots.len()));
        }
        Ok(RowTable { slots, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deliberately poor hash, so that runs collide and wrap around.
    fn weak(key: u64) -> u64 {
        (key % 5) << 61
    }

    #[test]
    fn insert_find_remove_match_a_set_through_growth_and_wraparound() {
        let keys: Vec<u64> = (0..500).map(|i| i * 7 + 3).collect();
        let mut t = RowTable::default();
        let mut held = std::collections::BTreeSet::new();
        let mut state = 11u64;
        for step in 0..5_000u32 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let row = (state >> 33) as u32 % 500;
            let hash = weak(keys[row as usize]);
            let rehash = |r: Row| weak(keys[r as usize]);
            if held.contains(&row) {
                assert!(t.remove(hash, |r| r == row, rehash), "step {step}: row {row}");
                held.remove(&row);
            } else {
                t.insert(hash, row, rehash);
                held.insert(row);
            }
            assert_eq!(t.len(), held.len());
            if step % 97 == 0 {
                for r in 0..500u32 {
                    let found = t.find(weak(keys[r as usize]), |x| x == r);
                    assert_eq!(found.is_some(), held.contains(&r), "step {step}: row {r}");
                }
            }
        }
        let mut all: Vec<Row> = t.iter().collect();
        all.sort_unstable();
        assert_eq!(all, held.iter().copied().collect::<Vec<_>>());
        t.shrink_to_fit(|r| weak(keys[r as usize]));
        assert!(held.iter().all(|&r| t.find(weak(keys[r as usize]), |x| x == r).is_some()));
    }

    #[test]
    fn images_round_trip_and_bad_images_are_refused() {
        let mut t = RowTable::with_capacity(10);
        for row in [0u32, 3, 4, 9] {
            t.insert(u64::from(row).wrapping_mul(0x9E37_79B9_7F4A_7C15), row, |_| unreachable!("no growth"));
        }
        let rows: RoaringBitmap = [0u32, 3, 4, 9].into_iter().collect();
        let back = RowTable::from_slots(t.slots().to_vec(), &rows).unwrap();
        assert_eq!(back.len(), 4);
        assert!(RowTable::from_slots(vec![EMPTY; 12], &RoaringBitmap::new()).is_err(), "not a power of two");
        let fewer: RoaringBitmap = [0u32, 3, 4].into_iter().collect();
        assert!(RowTable::from_slots(t.slots().to_vec(), &fewer).is_err(), "row beyond the set");
        let more: RoaringBitmap = [0u32, 1, 3, 4, 9].into_iter().collect();
        assert!(RowTable::from_slots(t.slots().to_vec(), &more).is_err(), "row missing");
        let mut twice = t.slots().to_vec();
        let free = twice.iter().position(|&r| r == EMPTY).unwrap();
        twice[free] = 3;
        assert!(RowTable::from_slots(twice, &rows).is_err(), "row held twice");
        let full: RoaringBitmap = (0..8u32).collect();
        assert!(RowTable::from_slots((0..8).collect(), &full).is_err(), "no free slot");
    }
}
