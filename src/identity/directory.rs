//! The identifier directory: identifier → profile id, with the merge rules
//! of INGEST.md "Identity resolution".
//!
//! # Representation
//!
//! Tens of millions of identifiers must fit in memory and load from a
//! snapshot in about a second, so the directory keeps no identifier strings
//! and no per-profile lists. An identifier is keyed by the 128-bit
//! [`id_hash`] of its kind and value (xxh3-128; a collision between two real
//! identifiers is as likely as two random 128-bit numbers being equal, which
//! we accept).
//!
//! - `table`: every identifier as one 24-byte entry (hash, owner word) in
//!   one flat vector, an ordered linear-probing table. An entry's home slot
//!   is `hi × buckets / 2^64` (`hi` the hash's upper half), which grows with
//!   the hash, and the entries sit in ascending hash order, each in slot
//!   `max(home, previous entry's slot + 1)`; a run that passes the last
//!   bucket continues in a tail instead of wrapping around. The layout is
//!   therefore a function of the set of hashes and of the bucket count,
//!   itself a function of the number of identifiers: the same identifiers
//!   give the same table whatever the order they arrived in. A lookup scans
//!   from the home slot and stops at an empty slot or a larger hash; an
//!   insert shifts the rest of its run one slot up. The table is at most
//!   4/5 full: it grows through 8, 12, 16, 24, 32, 48... buckets (×1.5 and
//!   ×4/3 in turn), so it is 53 % to 80 % full and costs 30 to 45 bytes
//!   per identifier.
//! - The owner word: the id of the profile that owned the identifier when
//!   the entry was last written, with the top bit ([`USER_FLAG`]) set when
//!   the identifier is that profile's user id.
//! - Merges leave the table alone. The profile merged away gets its bit in
//!   `merged`, and `forward` maps it to the live profile that absorbed it,
//!   so an entry naming it resolves in one step. When a profile that
//!   absorbed others is absorbed in turn, those others are re-pointed to the
//!   new survivor (`absorbed` lists them per survivor), so one step always
//!   reaches a live profile. A merge costs O(profiles absorbed so far by the
//!   one merged away), not O(identifiers).
//! - `users`: bit `p - 1` is set when live profile `p` has a user id (its
//!   entry carries [`USER_FLAG`]).
//!
//! Profile ids are allocated here, sequentially from 1, so "created first"
//! (INGEST.md step 5) means "smaller id".
//!
//! # Snapshots
//!
//! [`Directory::encode`] writes the table's entries in order, each with its
//! live owner, and no empty slot. [`Directory::decode`] is one sequential
//! pass: it checks that the hashes strictly ascend and that owners are
//! allocated profiles with at most one user id each, writes each entry at
//! its slot, and derives `users` and `merged` (an allocated profile that
//! owns nothing was merged away). The per-profile checks touch two bitmaps
//! of one bit per profile, small enough to stay in cache. Version 1
//! snapshots (profile records, each with its identifier list) are still
//! read, by sorting their entries first.
//!
//! # Determinism
//!
//! The directory is replicated state machine data: applying the same
//! messages in the same order gives the same directory on every replica.
//! Nothing reads a clock or a random number, the hash tables have fixed
//! hash functions, results never depend on iteration order, and
//! [`Directory::encode`] writes identifiers in hash order with their current
//! owner, so equal states give equal bytes however they were reached (a
//! replica that loaded a snapshot holds no forwarding, one that replayed the
//! merges does, and both encode alike).
//!
//! # Resolution, case by case
//!
//! `U`, `U1`, `U2` are user ids, `A`, `A1`... anonymous ids; a message lists
//! its identifiers in priority order (user id first). "The guard" is the
//! check of INGEST.md step 4: if the union of the message's identifiers and
//! of every profile owning one of them holds two different user ids, the
//! message's lowest-priority identifier still present (the last one) is
//! dropped and resolution starts again. The guard runs whatever the number
//! of owning profiles, because a profile may never hold two user ids (case 5
//! has a single owning profile and still needs it).
//!
//! 1. `[A]`, `A` unknown: a new profile owning `A` (step 2).
//! 2. `[U, A]`, `U` unknown, `A` on an anonymous profile `P`: `P` gains `U`
//!    (anonymous browsing, then identify). No merge.
//! 3. `[U, A]`, both unknown: a new profile owning both.
//! 4. `[U, A]`, `U` on `P1`, `A` on an anonymous profile `P2`: `P2` is merged
//!    into `P1`, the profile with a user id, even when `P1` was created
//!    later (step 5).
//! 5. `[U2, A]`, `U2` unknown, `A` on a profile `P` with user id `U1`: the
//!    union would hold `U1` and `U2`, so `A` is dropped and `[U2]` resolves
//!    to a new profile. `A` stays with `P`; `dropped` is `[A]` (two known
//!    users on one device).
//! 6. `[U2, A]`, `U2` on `P2`, `A` on `P1` with user id `U1`: `A` is dropped,
//!    the message applies to `P2`, which gains nothing.
//! 7. `[A1, A2]` on two anonymous profiles: the one created first (smaller
//!    id) survives and absorbs the other.
//! 8. Three or more owning profiles (`[U, A1, A2, A3]` with each on its own
//!    profile): all are merged into the one survivor, one [`MergeStep`] per
//!    absorbed profile in ascending id order, each naming the first message
//!    identifier (in message order) that the absorbed profile owned.
//! 9. Repeated identifiers in one message count once, at their first
//!    position. Two different user ids in one message trip the guard as well:
//!    identifiers are dropped from the end until at most one user id
//!    remains, so `[U1, U2, A]` drops `A`, then `U2`, and resolves `[U1]`.
//!    The guard always stops: a single identifier never conflicts, because
//!    its profile holds at most one user id.

use std::fmt;

use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::HashTable;
use serde::de::Error as _;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_128;

use crate::model::IdentifierKind;
use crate::shard::ProfileId;

/// The 128-bit hash that stands for an identifier in the directory: xxh3-128
/// of the kind byte followed by the value's bytes.
pub type IdHash = u128;

/// The byte that stands for an identifier kind in [`id_hash`]. Written out
/// rather than taken from the enum's discriminant: hashes are persisted in
/// snapshots, so reordering the enum must not change them.
fn kind_byte(kind: IdentifierKind) -> u8 {
    match kind {
        IdentifierKind::UserId => 1,
        IdentifierKind::AnonymousId => 2,
    }
}

/// The directory key of an identifier: xxh3-128 over `[kind byte] ++ value`.
///
/// Kinds are part of the key, so `user_id:x` and `anonymous_id:x` are two
/// identifiers.
pub fn id_hash(kind: IdentifierKind, value: &str) -> IdHash {
    // Values are at most 256 bytes (INGEST.md), so the common path hashes a
    // stack buffer; longer values (the directory does not enforce the limit)
    // take one allocation.
    const STACK_BYTES: usize = 256;
    let bytes = value.as_bytes();
    if bytes.len() <= STACK_BYTES {
        let mut buf = [0u8; STACK_BYTES + 1];
        buf[0] = kind_byte(kind);
        buf[1..=bytes.len()].copy_from_slice(bytes);
        xxh3_128(&buf[..=bytes.len()])
    } else {
        let mut buf = Vec::with_capacity(bytes.len() + 1);
        buf.push(kind_byte(kind));
        buf.extend_from_slice(bytes);
        xxh3_128(&buf)
    }
}

/// An [`IdHash`] stored as two `u64`s, so that table entries have 8-byte
/// alignment (a `u128` would pad a 24-byte entry to 32). Field order makes
/// the derived `Ord` agree with the `u128` order, which is the table's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hi: u64,
    lo: u64,
}

impl Key {
    fn of(kind: IdentifierKind, value: &str) -> Key {
        Key::from_hash(id_hash(kind, value))
    }

    fn from_hash(hash: IdHash) -> Key {
        Key { hi: (hash >> 64) as u64, lo: hash as u64 }
    }

    fn hash(self) -> IdHash {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }
}

/// Set in an owner word (of a table entry, and of a snapshot entry) when
/// the identifier is its profile's user id; the other bits are the profile
/// id.
pub const USER_FLAG: u64 = 1 << 63;
/// The profile id bits of an owner word.
const PROFILE_BITS: u64 = !USER_FLAG;

fn profile_of_word(word: u64) -> ProfileId {
    word & PROFILE_BITS
}

// ----- the identifier table -----

/// One table slot: `[hi, lo, owner word]`, all zero when empty (an owner
/// word is never 0: profile ids start at 1). An array rather than a struct
/// so that a new table is one zeroed allocation, whose pages the system
/// hands out already zeroed.
type Slot = [u64; 3];
const HI: usize = 0;
const LO: usize = 1;
const OWNER: usize = 2;
const EMPTY_SLOT: Slot = [0; 3];

fn slot_key(slot: &Slot) -> Key {
    Key { hi: slot[HI], lo: slot[LO] }
}

/// Buckets of the smallest table: the first size of the growth sequence.
const MIN_BUCKETS: usize = 8;
/// Slots reserved beyond the buckets when a table is allocated, so that a
/// run passing the last bucket (a few slots, usually) does not reallocate
/// the whole table.
const TAIL_SLACK: usize = 64;

/// Buckets for a table of `identifiers` entries: the first size of the
/// sequence 8, 12, 16, 24, 32... at most 4/5 full (0 for no identifier). A
/// function of the count alone, so that the layout is too.
fn buckets_for(identifiers: usize) -> usize {
    if identifiers == 0 {
        return 0;
    }
    let mut buckets = MIN_BUCKETS;
    while !fits(identifiers, buckets) {
        buckets = if buckets.is_power_of_two() { buckets + buckets / 2 } else { buckets / 3 * 4 };
    }
    buckets
}

/// True when `identifiers` entries keep `buckets` buckets at most 4/5 full.
fn fits(identifiers: usize, buckets: usize) -> bool {
    (identifiers as u128) * 5 <= (buckets as u128) * 4
}

/// The ordered linear-probing table of the module documentation.
#[derive(Clone, Debug, Default)]
struct Table {
    /// `buckets` slots plus the tail: `slots.len()` is the larger of
    /// `buckets` and the last entry's slot + 1.
    slots: Vec<Slot>,
    /// Home slots are `0..buckets`; `buckets_for(len)`.
    buckets: usize,
    /// Entries held.
    len: usize,
}

impl Table {
    /// The slot where `key`'s run starts: `hi × buckets / 2^64`, in
    /// `0..buckets`, non-decreasing in the key.
    fn home(&self, key: Key) -> usize {
        ((u128::from(key.hi) * self.buckets as u128) >> 64) as usize
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: Key) -> Option<usize> {
        let mut pos = self.home(key);
        while let Some(slot) = self.slots.get(pos) {
            if slot[OWNER] == 0 {
                return None;
            }
            match slot_key(slot).cmp(&key) {
                std::cmp::Ordering::Less => pos += 1,
                std::cmp::Ordering::Equal => return Some(pos),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    /// Reads the slot where `key`'s lookup starts, so that the cache misses
    /// of several lookups overlap.
    fn touch(&self, key: Key) -> u64 {
        self.slots.get(self.home(key)).map_or(0, |slot| slot[OWNER])
    }

    /// The owner word of `key`'s entry, if any.
    fn owner_word(&self, key: Key) -> Option<u64> {
        self.find(key).map(|pos| self.slots[pos][OWNER])
    }

    /// Adds `key`, which the table must not hold, with owner word `owner`
    /// (non-zero), growing the table first when it would pass 4/5 full.
    fn insert(&mut self, key: Key, owner: u64) {
        debug_assert!(owner != 0 && self.find(key).is_none());
        if !fits(self.len + 1, self.buckets) {
            self.rebuild(buckets_for(self.len + 1));
        }
        // The first slot from home that is free or holds a larger key.
        let mut pos = self.home(key);
        while pos < self.slots.len() && self.slots[pos][OWNER] != 0 && slot_key(&self.slots[pos]) < key {
            pos += 1;
        }
        if pos == self.slots.len() {
            self.push_empty();
        } else if self.slots[pos][OWNER] != 0 {
            // Shift the rest of the run up by one, into its first free slot.
            let mut end = pos + 1;
            while end < self.slots.len() && self.slots[end][OWNER] != 0 {
                end += 1;
            }
            if end == self.slots.len() {
                self.push_empty();
            }
            self.slots.copy_within(pos..end, pos + 1);
        }
        self.slots[pos] = [key.hi, key.lo, owner];
        self.len += 1;
    }

    /// Appends one empty slot to the tail, reserving a little more when the
    /// vector is full rather than doubling the whole table.
    fn push_empty(&mut self) {
        if self.slots.len() == self.slots.capacity() {
            self.slots.reserve_exact(TAIL_SLACK);
        }
        self.slots.push(EMPTY_SLOT);
    }

    /// Re-lays the entries out over `buckets` buckets (one sequential pass:
    /// they are already in order).
    fn rebuild(&mut self, buckets: usize) {
        let mut placer = Placer::new(buckets);
        for slot in self.slots.iter().filter(|s| s[OWNER] != 0) {
            placer.place(slot_key(slot), slot[OWNER]);
        }
        *self = placer.finish();
    }

    /// The entries in hash order: (key, owner word).
    fn entries(&self) -> impl Iterator<Item = (Key, u64)> + '_ {
        self.slots.iter().filter(|s| s[OWNER] != 0).map(|s| (slot_key(s), s[OWNER]))
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
    }

    /// Checks the layout: every entry at `max(home, previous slot + 1)`,
    /// hashes strictly ascending, empty slots zeroed, the bucket count
    /// `buckets_for(len)`, the tail no longer than the last entry needs.
    fn validate(&self) -> Result<(), DirectoryError> {
        check_count(
            "table buckets (for the identifiers held)",
            buckets_for(self.len) as u64,
            self.buckets as u64,
        )?;
        let mut next = 0usize;
        let mut previous: Option<Key> = None;
        let mut count = 0usize;
        for (pos, slot) in self.slots.iter().enumerate() {
            if slot[OWNER] == 0 {
                if *slot != EMPTY_SLOT {
                    return Err(invariant(0, "empty table slot holding a key"));
                }
                continue;
            }
            let key = slot_key(slot);
            if previous.is_some_and(|p| p >= key) {
                return Err(invariant(
                    profile_of_word(slot[OWNER]),
                    "table entries not in ascending hash order",
                ));
            }
            if pos != self.home(key).max(next) {
                return Err(invariant(profile_of_word(slot[OWNER]), "table entry not at its canonical slot"));
            }
            previous = Some(key);
            next = pos + 1;
            count += 1;
        }
        check_count("table entries", self.len as u64, count as u64)?;
        if self.slots.len() != self.buckets.max(next) {
            return Err(invariant(0, "table tail longer or shorter than its last entry needs"));
        }
        Ok(())
    }
}

/// Builds a [`Table`] from entries given in strictly ascending hash order,
/// each at `max(home, previous slot + 1)`.
struct Placer {
    table: Table,
    /// The slot after the last entry placed.
    next: usize,
}

impl Placer {
    /// A zeroed table of `buckets` buckets, with room for a short tail.
    fn new(buckets: usize) -> Placer {
        let mut slots = vec![EMPTY_SLOT; buckets + if buckets == 0 { 0 } else { TAIL_SLACK }];
        slots.truncate(buckets);
        Placer { table: Table { slots, buckets, len: 0 }, next: 0 }
    }

    /// Places the next entry; keys must ascend (the callers check).
    #[inline]
    fn place(&mut self, key: Key, owner: u64) {
        let pos = self.table.home(key).max(self.next);
        // `home < buckets <= len` and `next <= len`, so `pos <= len`.
        if pos == self.table.slots.len() {
            self.table.push_empty();
        }
        self.table.slots[pos] = [key.hi, key.lo, owner];
        self.next = pos + 1;
        self.table.len += 1;
    }

    fn finish(self) -> Table {
        self.table
    }
}

/// Errors of the identity layer.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// `resolve` was given a message with no identifier.
    #[error("a message needs at least one identifier (userId or anonymousId)")]
    NoIdentifiers,
    /// A snapshot ends before a field it needs.
    #[error("directory snapshot truncated: {needed} bytes needed at byte {offset}, only {available} left")]
    Truncated {
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left from `offset`.
        available: usize,
    },
    /// The bytes are not a directory snapshot.
    #[error("not a directory snapshot: magic bytes {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
        /// [`MAGIC`].
        expected: [u8; 4],
    },
    /// A snapshot written by a format version this build cannot read.
    #[error(
        "directory snapshot format version {found} is not supported (this build reads versions 1 and {supported})"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// The header's length disagrees with the number of bytes given.
    #[error("directory snapshot declares {declared} bytes but {given} were given (truncated or padded)")]
    LengthMismatch {
        /// Length written in the header.
        declared: u64,
        /// Length of the byte slice.
        given: usize,
    },
    /// The checksum does not match the content.
    #[error("directory snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC-32 stored in the trailer.
        stored: u32,
        /// CRC-32 of the bytes before the trailer.
        computed: u32,
    },
    /// Bytes left over after the last profile record or identifier entry.
    #[error("directory snapshot has {extra} unexpected bytes after its content, at byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// A profile record, or an identifier entry's owner, that breaks a rule
    /// of the format.
    #[error("directory profile {profile}: {problem}")]
    InvalidProfile {
        /// The profile id in the record or the entry.
        profile: ProfileId,
        /// What is wrong.
        problem: &'static str,
    },
    /// An identifier entry of a version 2 snapshot out of place.
    #[error("directory snapshot identifier entry {index} (byte {offset}): {problem}")]
    InvalidEntry {
        /// The entry's position among the entries, from 0.
        index: u64,
        /// The entry's byte offset in the snapshot.
        offset: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// One identifier owned by two profiles.
    #[error("identifier {hash:#034x} is owned by both profile {first} and profile {second}")]
    DuplicateIdentifier {
        /// The identifier's hash.
        hash: IdHash,
        /// The profile that owned it first.
        first: ProfileId,
        /// The other profile.
        second: ProfileId,
    },
    /// A count in the header or in the state disagrees with the content.
    #[error("directory {what}: expected {expected}, found {found}")]
    CountMismatch {
        /// Which count.
        what: &'static str,
        /// The declared or expected value.
        expected: u64,
        /// The value found.
        found: u64,
    },
    /// More profile ids allocated than identifiers exist: impossible, since
    /// each created profile registers at least one new identifier and
    /// identifiers are never removed.
    #[error("directory claims {allocated} profile ids allocated but holds only {identifiers} identifiers")]
    TooManyAllocated {
        /// Profile ids allocated.
        allocated: u64,
        /// Identifiers held.
        identifiers: u64,
    },
    /// An in-memory invariant found broken by [`Directory::validate`].
    #[error("directory invariant broken at profile {profile}: {problem}")]
    Invariant {
        /// The profile concerned (0 when none in particular).
        profile: ProfileId,
        /// What is wrong.
        problem: &'static str,
    },
}

/// What resolving one message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The profile the message applies to.
    pub profile: ProfileId,
    /// True when `profile` was created by this message.
    pub created: bool,
    /// Profiles merged into `profile`, in the order the merges happen
    /// (ascending `from`), each with the identifier that linked it.
    pub merged: Vec<MergeStep>,
    /// Identifiers of the message that `profile` gained (not held before), in
    /// message order: new identifiers, and those that came with a merged
    /// profile. For a created profile, all of the message's identifiers left
    /// after `dropped`.
    pub gained: Vec<(IdentifierKind, String)>,
    /// Identifiers dropped by rule 4 (their profile keeps them), in the order
    /// dropped. A dropped identifier that no profile owned stays unknown.
    pub dropped: Vec<(IdentifierKind, String)>,
}

/// One merge of a [`Resolution`]: `from` is absorbed by `into` and leaves
/// the universe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeStep {
    /// The profile merged away.
    pub from: ProfileId,
    /// The survivor.
    pub into: ProfileId,
    /// The message identifier, owned by `from`, that linked the two: the
    /// first such identifier in message order.
    pub linked_by: (IdentifierKind, String),
}

/// Identifier → profile directory with INGEST.md's merge rules; see the
/// module documentation for the representation and the case list.
///
/// `Serialize`/`Deserialize` are written by hand: a directory serializes as
/// `{ allocated, profiles: [{ id, has_user, ids }] }` with profiles in id
/// order and each profile's identifier hashes in canonical order (the user
/// id first, then ascending), the content of [`Directory::encode`] grouped
/// by profile (grouping sorts the identifiers: serde is for tools and
/// tests, snapshots use [`Directory::encode`]).
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Identifier hash → owner word.
    table: Table,
    /// Bit `p - 1` is set when live profile `p` has a user id. One word per
    /// 64 allocated ids.
    users: Vec<u64>,
    /// Bit `p - 1` is set when profile `p` has been merged away. One word
    /// per 64 allocated ids.
    merged: Vec<u64>,
    /// Profile ids allocated: the last id created.
    allocated: u64,
    /// Profiles not merged away.
    live: u64,
    /// Merged-away profile → the live profile that holds its identifiers,
    /// for every profile merged away since the directory was built or
    /// decoded (table entries may still name it).
    forward: HashTable<(ProfileId, ProfileId)>,
    /// Live profile → the merged-away profiles that `forward` sends to it.
    absorbed: HashTable<(ProfileId, Vec<ProfileId>)>,
    /// Sum of the `absorbed` lists' capacities, for
    /// [`Directory::heap_bytes`].
    absorbed_capacity: usize,
}

/// The hash of a profile id in `forward` and `absorbed`: a fixed odd
/// multiplier, which spreads sequential ids over both the low bits
/// (hashbrown's bucket) and the high bits (its control byte).
fn profile_hash(profile: ProfileId) -> u64 {
    profile.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One message identifier during resolution.
struct Item {
    /// Position in the caller's slice.
    index: usize,
    key: Key,
    kind: IdentifierKind,
    /// Profile owning it before the message.
    owner: Option<ProfileId>,
}

/// Whose user id an identifier brings, for the guard. Two profiles' user
/// ids always differ (an identifier has one owner) and a user id no profile
/// owns differs from every profile's, so comparing these compares the user
/// ids themselves without storing them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UserId {
    /// The user id of this (live) profile.
    OfProfile(ProfileId),
    /// A user id that no profile owns yet.
    Unowned(Key),
}

impl Directory {
    /// An empty directory; the first profile it creates is 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves one message's identifiers per INGEST.md steps 1 to 5 and
    /// applies the result: new identifiers are registered, and merged
    /// profiles are removed, their identifiers resolving to the survivor
    /// from then on.
    ///
    /// `ids` is in priority order, highest first (user id, then anonymous
    /// id); the identifier dropped by the step 4 guard is the last one still
    /// present. Repeats are ignored after their first position. The only
    /// error is an empty `ids`. It panics only if the directory's own
    /// invariants are already broken (see [`Directory::validate`]): a
    /// replica that crashes beats one that diverges.
    pub fn resolve(&mut self, ids: &[(IdentifierKind, String)]) -> Result<Resolution, DirectoryError> {
        if ids.is_empty() {
            return Err(DirectoryError::NoIdentifiers);
        }

        // Step 1: the message's identifiers (repeats once) and their owners.
        // Messages carry one or two identifiers, so the linear repeat check
        // is cheaper than a set.
        let mut items: Vec<Item> = Vec::with_capacity(ids.len());
        for (index, (kind, value)) in ids.iter().enumerate() {
            let key = Key::of(*kind, value);
            if items.iter().any(|item| item.key == key) {
                continue;
            }
            items.push(Item { index, key, kind: *kind, owner: None });
        }
        // The table is far larger than the caches, so a lookup waits for
        // memory. Reading every identifier's first slot before the first
        // lookup overlaps those waits (the creating path measured 1.5×
        // faster); `black_box` keeps the reads from being optimised away.
        let first_slots = items.iter().fold(0u64, |acc, item| acc ^ self.table.touch(item.key));
        std::hint::black_box(first_slots);
        for item in &mut items {
            item.owner = self.owner_of(item.key);
        }

        // Step 4's guard, for every number of owners (case 5 of the module
        // documentation has one).
        let mut dropped = Vec::new();
        while self.holds_two_user_ids(&items) {
            // A conflict needs two identifiers, so there is one to pop.
            debug_assert!(items.len() >= 2);
            let Some(item) = items.pop() else { break };
            dropped.push(ids[item.index].clone());
        }

        // Owning profiles, ascending, each with its first linking identifier
        // in message order (the sort is stable, `dedup` keeps the first).
        let mut owners: Vec<(ProfileId, usize)> =
            items.iter().filter_map(|item| item.owner.map(|p| (p, item.index))).collect();
        owners.sort_by_key(|&(p, _)| p);
        owners.dedup_by_key(|&mut (p, _)| p);

        // Step 5: the profile with a user id (at most one, thanks to the
        // guard), else the one created first. Step 2 when there is none.
        let survivor = owners
            .iter()
            .map(|&(p, _)| p)
            .find(|&p| self.has_user(p))
            .or_else(|| owners.first().map(|&(p, _)| p));
        let (profile, created) = match survivor {
            Some(p) => (p, false),
            None => (self.create(), true),
        };

        // Step 4: merges, in ascending order of the absorbed profile.
        let mut merged = Vec::new();
        for &(from, index) in owners.iter().filter(|&&(p, _)| p != profile) {
            self.absorb(from, profile);
            merged.push(MergeStep { from, into: profile, linked_by: ids[index].clone() });
        }

        // Step 3 (and 2): new identifiers join the profile.
        let mut gained = Vec::new();
        for item in &items {
            if item.owner == Some(profile) {
                continue;
            }
            if item.owner.is_none() {
                self.register(item.key, item.kind, profile);
            }
            gained.push(ids[item.index].clone());
        }

        Ok(Resolution { profile, created, merged, gained, dropped })
    }

    /// Read-only: the profile owning an identifier.
    pub fn lookup(&self, kind: IdentifierKind, value: &str) -> Option<ProfileId> {
        self.owner_of(Key::of(kind, value))
    }

    /// Read-only: the profile owning the identifier with this hash.
    pub fn lookup_hash(&self, hash: IdHash) -> Option<ProfileId> {
        self.owner_of(Key::from_hash(hash))
    }

    /// Profiles currently known (not merged away).
    pub fn profiles(&self) -> u64 {
        self.live
    }

    /// Identifiers registered.
    pub fn identifiers(&self) -> u64 {
        self.table.len as u64
    }

    /// The id the next created profile will get.
    pub fn next_profile(&self) -> ProfileId {
        self.allocated + 1
    }

    /// Heap bytes used, from capacities: the table's slots, the two
    /// bitmaps, and the forwarding tables with their lists (hashbrown
    /// buckets counted as entry plus control byte). O(1).
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
            + (self.users.capacity() + self.merged.capacity()) * size_of::<u64>()
            + hash_table_bytes(self.forward.capacity(), size_of::<(ProfileId, ProfileId)>())
            + hash_table_bytes(self.absorbed.capacity(), size_of::<(ProfileId, Vec<ProfileId>)>())
            + self.absorbed_capacity * size_of::<ProfileId>()
    }

    /// Checks every invariant of the state: the table's canonical layout
    /// (see [`Table`]); every entry owned by an allocated profile that is
    /// live or forwards in one step to a live one; every live profile
    /// owning at least one identifier, and exactly one user id when its
    /// user bit is set (none otherwise); merged-away profiles carrying no
    /// user bit; `forward` and `absorbed` describing the same pairs; the
    /// counters agreeing; no more profile ids allocated than identifiers
    /// exist. O(identifiers + profiles); for tests, fuzzers and tools.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        self.table.validate()?;
        let words = words_for(self.allocated);
        check_count("user bitmap words", words as u64, self.users.len() as u64)?;
        check_count("merged bitmap words", words as u64, self.merged.len() as u64)?;
        if bits_beyond(&self.users, self.allocated) || bits_beyond(&self.merged, self.allocated) {
            return Err(invariant(0, "bit set beyond the allocated profiles"));
        }
        // Which live profiles own something, and which own a user id.
        let mut owning = vec![0u64; words];
        let mut with_user = vec![0u64; words];
        for (_, word) in self.table.entries() {
            let named = profile_of_word(word);
            if named == 0 || named > self.allocated {
                return Err(invariant(named, "table entry owned by a profile id never allocated"));
            }
            let profile = if bit(&self.merged, named) {
                match self.forward.find(profile_hash(named), |&(from, _)| from == named) {
                    Some(&(_, into)) if self.is_live(into) => into,
                    Some(_) => return Err(invariant(named, "forwarded to a profile that is not live")),
                    None => {
                        return Err(invariant(
                            named,
                            "table entry names a merged-away profile without forward",
                        ))
                    }
                }
            } else {
                named
            };
            set_bit(&mut owning, profile);
            if word & USER_FLAG != 0 {
                if bit(&with_user, profile) {
                    return Err(invariant(profile, "profile owns two user ids"));
                }
                set_bit(&mut with_user, profile);
            }
        }
        let mut live = 0u64;
        for profile in 1..=self.allocated {
            if bit(&self.merged, profile) {
                if bit(&self.users, profile) {
                    return Err(invariant(profile, "merged-away profile still marked as having a user id"));
                }
                continue;
            }
            live += 1;
            if !bit(&owning, profile) {
                return Err(invariant(profile, "live profile owns no identifier"));
            }
            if bit(&self.users, profile) != bit(&with_user, profile) {
                return Err(invariant(profile, "user bit disagrees with the user ids it owns"));
            }
        }
        check_count("live profiles", live, self.live)?;
        self.validate_forwarding()?;
        let identifiers = self.table.len as u64;
        if self.allocated > identifiers {
            return Err(DirectoryError::TooManyAllocated { allocated: self.allocated, identifiers });
        }
        Ok(())
    }

    /// `forward` and `absorbed` hold the same (merged-away, live) pairs,
    /// each once, and the capacity count is right.
    fn validate_forwarding(&self) -> Result<(), DirectoryError> {
        let mut listed = Vec::with_capacity(self.forward.len());
        let mut capacity = 0usize;
        for (into, froms) in self.absorbed.iter() {
            if !self.is_live(*into) {
                return Err(invariant(*into, "absorbed list kept for a profile that is not live"));
            }
            capacity += froms.capacity();
            for &from in froms {
                match self.forward.find(profile_hash(from), |&(f, _)| f == from) {
                    Some(&(_, to)) if to == *into => listed.push(from),
                    _ => return Err(invariant(from, "absorbed list disagrees with forward")),
                }
            }
        }
        for &(from, _) in self.forward.iter() {
            if from == 0 || from > self.allocated || !bit(&self.merged, from) {
                return Err(invariant(from, "forward kept for a profile not merged away"));
            }
        }
        listed.sort_unstable();
        if listed.windows(2).any(|w| w[0] == w[1]) {
            return Err(invariant(0, "profile listed twice in absorbed lists"));
        }
        check_count(
            "forwarded profiles (absorbed lists against forward)",
            self.forward.len() as u64,
            listed.len() as u64,
        )?;
        check_count("absorbed list capacity", capacity as u64, self.absorbed_capacity as u64)
    }

    /// Serializes the directory to bytes; the same state gives the same
    /// bytes.
    ///
    /// Format version 2 (all integers little-endian): magic `CDIR`, version
    /// `u32`, total length `u64`, profile ids allocated `u64`, live profiles
    /// `u64`, identifiers `u64`; then per identifier, in ascending hash
    /// order, the hash as `u128` and the owner word `u64` (the live profile
    /// owning it, [`USER_FLAG`] set on user ids); finally the CRC-32 of
    /// everything before it. Allocated profiles that own nothing were
    /// merged away.
    pub fn encode(&self) -> Vec<u8> {
        let total = HEADER_BYTES + self.table.len * ENTRY_BYTES + CHECKSUM_BYTES;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(total as u64).to_le_bytes());
        out.extend_from_slice(&self.allocated.to_le_bytes());
        out.extend_from_slice(&self.live.to_le_bytes());
        out.extend_from_slice(&(self.table.len as u64).to_le_bytes());
        for (key, word) in self.table.entries() {
            let mut entry = [0u8; ENTRY_BYTES];
            entry[..16].copy_from_slice(&key.hash().to_le_bytes());
            let owner = self.root(profile_of_word(word)) | (word & USER_FLAG);
            entry[16..].copy_from_slice(&owner.to_le_bytes());
            out.extend_from_slice(&entry);
        }
        debug_assert_eq!(out.len() + CHECKSUM_BYTES, total);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Restores a directory written by [`Directory::encode`] (format
    /// version 2, or the version 1 of earlier builds). Corrupt, truncated
    /// or inconsistent bytes give an error naming what is wrong and where
    /// (a checksum mismatch first); nothing panics, and no allocation
    /// exceeds what the input's length can justify. From 1 MiB on, the
    /// checksum is computed on a second thread while the entries load.
    pub fn decode(bytes: &[u8]) -> Result<Directory, DirectoryError> {
        let mut reader = Reader { bytes, pos: 0 };
        let magic = reader.array::<4>()?;
        if magic != MAGIC {
            return Err(DirectoryError::BadMagic { found: magic, expected: MAGIC });
        }
        let version = reader.u32()?;
        if version != FORMAT_VERSION && version != LEGACY_FORMAT_VERSION {
            return Err(DirectoryError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        let declared = reader.u64()?;
        if declared != bytes.len() as u64 {
            return Err(DirectoryError::LengthMismatch { declared, given: bytes.len() });
        }
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return Err(DirectoryError::Truncated {
                offset: reader.pos,
                needed: HEADER_BYTES + CHECKSUM_BYTES - reader.pos,
                available: bytes.len() - reader.pos,
            });
        }
        let body_end = bytes.len() - CHECKSUM_BYTES;
        let mut stored = [0u8; 4];
        stored.copy_from_slice(&bytes[body_end..]);
        let stored = u32::from_le_bytes(stored);
        // From here on, read only the body.
        let body = Reader { bytes: &bytes[..body_end], pos: reader.pos };
        let (computed, decoded) = checksum_alongside(body.bytes, || match version {
            LEGACY_FORMAT_VERSION => decode_records(body),
            _ => decode_entries(body),
        });
        if stored != computed {
            return Err(DirectoryError::ChecksumMismatch { stored, computed });
        }
        decoded
    }

    // ----- internals -----

    /// The live profile owning `key`, if any.
    fn owner_of(&self, key: Key) -> Option<ProfileId> {
        self.table.owner_word(key).map(|word| self.root(profile_of_word(word)))
    }

    /// The live profile holding the identifiers of `profile`: itself, or
    /// the one it was merged into.
    fn root(&self, profile: ProfileId) -> ProfileId {
        // Entries name a merged-away profile only after a merge made here,
        // which left a forward: with none (a decoded directory), skip the
        // bitmap read, a likely cache miss.
        if self.forward.is_empty() || !bit(&self.merged, profile) {
            return profile;
        }
        match self.forward.find(profile_hash(profile), |&(from, _)| from == profile) {
            Some(&(_, into)) => into,
            None => panic!("identity directory: profile {profile} is merged away but forwards nowhere"),
        }
    }

    fn is_live(&self, profile: ProfileId) -> bool {
        profile >= 1 && profile <= self.allocated && !bit(&self.merged, profile)
    }

    fn has_user(&self, profile: ProfileId) -> bool {
        bit(&self.users, profile)
    }

    /// Whose user id an item brings, if any.
    fn user_id_of(&self, item: &Item) -> Option<UserId> {
        match item.owner {
            Some(p) if self.has_user(p) => Some(UserId::OfProfile(p)),
            Some(_) => None,
            None if item.kind == IdentifierKind::UserId => Some(UserId::Unowned(item.key)),
            None => None,
        }
    }

    /// True when the message's identifiers together with every profile
    /// owning one of them hold two different user ids.
    fn holds_two_user_ids(&self, items: &[Item]) -> bool {
        let mut seen: Option<UserId> = None;
        for item in items {
            match (seen, self.user_id_of(item)) {
                (_, None) => {}
                (None, Some(u)) => seen = Some(u),
                (Some(s), Some(u)) if s != u => return true,
                _ => {}
            }
        }
        false
    }

    /// Allocates the next profile id (its identifiers are registered right
    /// after).
    fn create(&mut self) -> ProfileId {
        // A profile id needs an identifier, so ids stay far below the user
        // flag.
        assert!(self.allocated < PROFILE_BITS, "identity directory: profile ids exhausted");
        self.allocated += 1;
        self.live += 1;
        let words = words_for(self.allocated);
        self.users.resize(words, 0);
        self.merged.resize(words, 0);
        self.allocated
    }

    /// Registers an unowned identifier as `profile`'s (a live profile).
    fn register(&mut self, key: Key, kind: IdentifierKind, profile: ProfileId) {
        let mut word = profile;
        if kind == IdentifierKind::UserId {
            // The guard lets a user id reach only a profile without one.
            assert!(
                !self.has_user(profile),
                "identity directory: profile {profile} would get a second user id"
            );
            set_bit(&mut self.users, profile);
            word |= USER_FLAG;
        }
        self.table.insert(key, word);
    }

    /// Merges profile `from` into `into`: `from` forwards to `into`, and so
    /// do the profiles `from` had absorbed.
    fn absorb(&mut self, from: ProfileId, into: ProfileId) {
        assert!(self.is_live(from), "identity directory: merging profile {from}, which is not live");
        assert!(
            self.is_live(into) && from != into,
            "identity directory: merging into profile {into}, which is not live"
        );
        let from_user = self.has_user(from);
        // The survivor is the profile with a user id when there is one
        // (step 5), so `from` never brings one; handle it anyway so the
        // bits stay right whatever the caller.
        assert!(
            !(from_user && self.has_user(into)),
            "identity directory: merging profile {from} into {into} would give two user ids"
        );
        let mut moved = match self.absorbed.find_entry(profile_hash(from), |(p, _)| *p == from) {
            Ok(entry) => entry.remove().0 .1,
            Err(_) => Vec::new(),
        };
        self.absorbed_capacity -= moved.capacity();
        for &p in &moved {
            let Some(entry) = self.forward.find_mut(profile_hash(p), |(f, _)| *f == p) else {
                panic!("identity directory: profile {p}, absorbed by {from}, has no forward");
            };
            assert_eq!(entry.1, from, "identity directory: profile {p} listed under the wrong survivor");
            entry.1 = into;
        }
        moved.push(from);
        self.forward.insert_unique(profile_hash(from), (from, into), |(p, _)| profile_hash(*p));
        match self.absorbed.entry(profile_hash(into), |(p, _)| *p == into, |(p, _)| profile_hash(*p)) {
            TableEntry::Occupied(mut entry) => {
                let list = &mut entry.get_mut().1;
                let counted = list.capacity();
                // Append the shorter list to the longer, so that a profile
                // id is copied O(log n) times at most.
                if list.len() < moved.len() {
                    std::mem::swap(list, &mut moved);
                }
                list.extend_from_slice(&moved);
                self.absorbed_capacity = self.absorbed_capacity - counted + list.capacity();
            }
            TableEntry::Vacant(entry) => {
                self.absorbed_capacity += moved.capacity();
                entry.insert((into, moved));
            }
        }
        set_bit(&mut self.merged, from);
        if from_user {
            clear_bit(&mut self.users, from);
            set_bit(&mut self.users, into);
        }
        self.live -= 1;
    }

    /// Every identifier: (key, live owner, is its user id), in hash order.
    fn entries(&self) -> impl Iterator<Item = (Key, ProfileId, bool)> + '_ {
        self.table.entries().map(|(key, word)| (key, self.root(profile_of_word(word)), word & USER_FLAG != 0))
    }

    /// Live profiles in id order with their identifiers in canonical order
    /// (the user id first, the rest ascending): (id, has user id, keys).
    /// Sorts every identifier: for serde and tests.
    fn profile_lists(&self) -> Vec<(ProfileId, bool, Vec<Key>)> {
        let mut all: Vec<(ProfileId, bool, Key)> =
            self.entries().map(|(key, profile, user)| (profile, !user, key)).collect();
        all.sort_unstable();
        let mut lists: Vec<(ProfileId, bool, Vec<Key>)> = Vec::with_capacity(self.live as usize);
        for (profile, not_user, key) in all {
            match lists.last_mut() {
                Some((p, _, keys)) if *p == profile => keys.push(key),
                _ => lists.push((profile, !not_user, vec![key])),
            }
        }
        lists
    }
}

fn hash_table_bytes(capacity: usize, entry_bytes: usize) -> usize {
    // hashbrown keeps at most 7/8 of a power-of-two bucket count full (all
    // but one bucket below 8 buckets), plus one group of trailing control
    // bytes.
    let buckets = match capacity {
        0 => 0,
        1..=7 => (capacity + 1).next_power_of_two(),
        _ => (capacity * 8 / 7).next_power_of_two(),
    };
    if buckets == 0 {
        0
    } else {
        buckets * (entry_bytes + 1) + 16
    }
}

// ----- per-profile bitmaps (bit `p - 1` for profile `p`) -----

/// Words of a bitmap covering `allocated` profiles.
fn words_for(allocated: u64) -> usize {
    // Bitmaps are only built for counts bounded by memory or by the input.
    allocated.div_ceil(64) as usize
}

fn bit(bits: &[u64], profile: ProfileId) -> bool {
    let index = profile.wrapping_sub(1);
    bits.get((index / 64) as usize).is_some_and(|word| word >> (index % 64) & 1 == 1)
}

/// Sets a profile's bit; the bitmap covers it (callers size it).
fn set_bit(bits: &mut [u64], profile: ProfileId) {
    let index = profile - 1;
    bits[(index / 64) as usize] |= 1 << (index % 64);
}

fn clear_bit(bits: &mut [u64], profile: ProfileId) {
    let index = profile - 1;
    bits[(index / 64) as usize] &= !(1 << (index % 64));
}

/// True when a bit past the first `allocated` is set.
fn bits_beyond(bits: &[u64], allocated: u64) -> bool {
    let full = (allocated / 64) as usize;
    let partial = allocated % 64;
    bits.iter().enumerate().skip(full).any(|(i, &word)| {
        let kept = if i == full { (1u64 << partial) - 1 } else { 0 };
        word & !kept != 0
    })
}

fn invariant(profile: ProfileId, problem: &'static str) -> DirectoryError {
    DirectoryError::Invariant { profile, problem }
}

fn check_count(what: &'static str, expected: u64, found: u64) -> Result<(), DirectoryError> {
    if expected == found {
        Ok(())
    } else {
        Err(DirectoryError::CountMismatch { what, expected, found })
    }
}

// ----- snapshot format -----

/// First bytes of an encoded directory.
pub const MAGIC: [u8; 4] = *b"CDIR";
/// Format version written by [`Directory::encode`]: identifier entries in
/// hash order.
pub const FORMAT_VERSION: u32 = 2;
/// The earlier format, still read: profile records in id order, each with
/// its identifier list.
pub const LEGACY_FORMAT_VERSION: u32 = 1;
/// magic, version, length, allocated, live, identifiers.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 8;
/// Version 2: hash, owner word.
const ENTRY_BYTES: usize = 16 + 8;
const CHECKSUM_BYTES: usize = 4;

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DirectoryError> {
        let Some(slice) = self.bytes.get(self.pos..self.pos + N) else {
            return Err(DirectoryError::Truncated {
                offset: self.pos,
                needed: N,
                available: self.remaining(),
            });
        };
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DirectoryError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DirectoryError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DirectoryError> {
        self.array().map(u64::from_le_bytes)
    }

    fn u128(&mut self) -> Result<u128, DirectoryError> {
        self.array().map(u128::from_le_bytes)
    }
}

/// Why [`Loader::push`] refused an entry; placed in the snapshot by
/// [`EntryProblem::at`].
enum EntryProblem {
    /// Not above the previous entry's hash.
    OutOfOrder,
    /// The same hash as the previous entry, owned by `first` before.
    Duplicate { hash: IdHash, first: ProfileId, second: ProfileId },
    /// An owner that breaks a rule.
    Owner { profile: ProfileId, problem: &'static str },
}

impl EntryProblem {
    /// The error for entry `index` of a version 2 body starting at byte
    /// `start`.
    fn at(self, index: usize, start: usize) -> DirectoryError {
        match self {
            EntryProblem::OutOfOrder => DirectoryError::InvalidEntry {
                index: index as u64,
                offset: (start + index * ENTRY_BYTES) as u64,
                problem: "identifier hashes not in strictly ascending order",
            },
            other => other.into_error(),
        }
    }

    /// The error where entries have no byte position (version 1, serde):
    /// they were sorted here, so they are never out of order.
    fn into_error(self) -> DirectoryError {
        match self {
            EntryProblem::OutOfOrder => invariant(0, "identifier entries out of order after sorting"),
            EntryProblem::Duplicate { hash, first, second } => {
                DirectoryError::DuplicateIdentifier { hash, first, second }
            }
            EntryProblem::Owner { profile, problem } => DirectoryError::InvalidProfile { profile, problem },
        }
    }
}

/// Builds a directory from its identifier entries in strictly ascending
/// hash order, each with a live owner, checking each: one sequential pass
/// that writes the table and one bitmap of two bits per profile.
struct Loader {
    placer: Placer,
    allocated: u64,
    /// Bits `2(p - 1)` and `2(p - 1) + 1`: profile `p` owns an identifier,
    /// owns a user id. Set by a blind OR, which the pass never waits for (a
    /// read there, in a bitmap the streaming evicts from cache, was half of
    /// the pass's time); two user ids on one profile show in `finish` as
    /// fewer user bits than user entries.
    profile_bits: Vec<u64>,
    /// Entries carrying [`USER_FLAG`].
    user_entries: u64,
    /// Entries pushed.
    pushed: u64,
    /// The last entry pushed: its hash and profile.
    previous: IdHash,
    previous_profile: ProfileId,
}

impl Loader {
    /// `identifiers` must already be bounded by the input's size: it sizes
    /// the table, and `allocated` (checked against it) sizes the bitmap.
    fn new(allocated: u64, identifiers: u64) -> Result<Loader, DirectoryError> {
        if allocated > identifiers {
            return Err(DirectoryError::TooManyAllocated { allocated, identifiers });
        }
        Ok(Loader {
            placer: Placer::new(buckets_for(identifiers as usize)),
            allocated,
            profile_bits: vec![0; 2 * words_for(allocated)],
            user_entries: 0,
            pushed: 0,
            previous: 0,
            previous_profile: 0,
        })
    }

    #[inline(always)]
    fn push(&mut self, hash: IdHash, word: u64) -> Result<(), EntryProblem> {
        let profile = profile_of_word(word);
        if self.pushed > 0 && hash <= self.previous {
            return Err(self.order_problem(hash, profile));
        }
        // Profile 0 wraps to the largest value.
        if profile.wrapping_sub(1) >= self.allocated {
            return Err(owner_problem(profile));
        }
        let index = profile - 1;
        let user = word >> 63;
        self.profile_bits[(index / 32) as usize] |= (1 | user << 1) << (2 * (index % 32));
        self.user_entries += user;
        self.placer.place(Key::from_hash(hash), word);
        self.previous = hash;
        self.previous_profile = profile;
        self.pushed += 1;
        Ok(())
    }

    #[cold]
    fn order_problem(&self, hash: IdHash, profile: ProfileId) -> EntryProblem {
        if hash == self.previous {
            EntryProblem::Duplicate { hash, first: self.previous_profile, second: profile }
        } else {
            EntryProblem::OutOfOrder
        }
    }

    /// Checks the counts and derives the bitmaps: `users`, and `merged`
    /// (allocated profiles owning nothing).
    fn finish(self, declared_live: u64, declared_identifiers: u64) -> Result<Directory, DirectoryError> {
        let words = words_for(self.allocated);
        let mut owning = vec![0u64; words];
        let mut users = vec![0u64; words];
        for (i, &pairs) in self.profile_bits.iter().enumerate() {
            let shift = 32 * (i % 2);
            owning[i / 2] |= even_bits(pairs) << shift;
            users[i / 2] |= even_bits(pairs >> 1) << shift;
        }
        let table = self.placer.finish();
        let user_profiles: u64 = users.iter().map(|w| u64::from(w.count_ones())).sum();
        if user_profiles != self.user_entries {
            return Err(two_user_ids(&table));
        }
        let live: u64 = owning.iter().map(|w| u64::from(w.count_ones())).sum();
        check_count("live profiles", declared_live, live)?;
        check_count("identifiers", declared_identifiers, table.len as u64)?;
        let mut merged: Vec<u64> = owning.iter().map(|w| !w).collect();
        // Ids past `allocated` in the last word are not merged, just unused.
        let partial = self.allocated % 64;
        if let (Some(last), true) = (merged.last_mut(), partial != 0) {
            *last &= (1u64 << partial) - 1;
        }
        let dir = Directory { table, users, merged, allocated: self.allocated, live, ..Directory::default() };
        debug_assert_eq!(dir.validate(), Ok(()));
        Ok(dir)
    }
}

#[cold]
fn owner_problem(profile: ProfileId) -> EntryProblem {
    let problem = if profile == 0 {
        "identifier owned by profile 0, never allocated"
    } else {
        "profile id beyond the ids allocated"
    };
    EntryProblem::Owner { profile, problem }
}

/// The error for a loaded table where some profile owns two user ids: the
/// first such profile in hash order of its second user id.
#[cold]
fn two_user_ids(table: &Table) -> DirectoryError {
    let mut seen = std::collections::HashSet::new();
    for (_, word) in table.entries().filter(|(_, word)| word & USER_FLAG != 0) {
        let profile = profile_of_word(word);
        if !seen.insert(profile) {
            return DirectoryError::InvalidProfile { profile, problem: "profile owns two user ids" };
        }
    }
    invariant(0, "user id count changed while loading")
}

/// The even-numbered bits of `x`, packed into its low 32 bits.
fn even_bits(x: u64) -> u64 {
    let mut x = x & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0f0f_0f0f_0f0f_0f0f;
    x = (x | (x >> 4)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    (x | (x >> 16)) & 0x0000_0000_ffff_ffff
}

/// Inputs from this size on have their checksum computed on a second
/// thread while they are decoded (the decoding of corrupt bytes is bounded
/// and panic-free, and a checksum mismatch wins over what it found).
const PARALLEL_CHECKSUM_BYTES: usize = 1 << 20;

/// The CRC-32 of `body` and the result of `decode`, the two computed at
/// once on two threads for large inputs.
fn checksum_alongside<T: Send>(body: &[u8], decode: impl FnOnce() -> T + Send) -> (u32, T) {
    if body.len() < PARALLEL_CHECKSUM_BYTES {
        return (crc32fast::hash(body), decode());
    }
    std::thread::scope(|scope| {
        let checksum = std::thread::Builder::new()
            .name("directory-crc".to_owned())
            .spawn_scoped(scope, || crc32fast::hash(body));
        let decoded = decode();
        // Without a thread (or if it died), compute it here.
        let computed = match checksum {
            Ok(handle) => handle.join().unwrap_or_else(|_| crc32fast::hash(body)),
            Err(_) => crc32fast::hash(body),
        };
        (computed, decoded)
    })
}

/// Reads the identifier entries of a version 2 body.
fn decode_entries(mut reader: Reader<'_>) -> Result<Directory, DirectoryError> {
    let allocated = reader.u64()?;
    let live = reader.u64()?;
    let identifiers = reader.u64()?;
    // Bounds before allocating: every identifier takes ENTRY_BYTES.
    let fitting = (reader.remaining() / ENTRY_BYTES) as u64;
    if identifiers > fitting {
        return Err(DirectoryError::CountMismatch {
            what: "identifiers (more than the bytes can hold)",
            expected: fitting,
            found: identifiers,
        });
    }
    // `identifiers` now fits the input, hence a usize.
    let entries_bytes = identifiers as usize * ENTRY_BYTES;
    if reader.remaining() != entries_bytes {
        return Err(DirectoryError::TrailingBytes {
            offset: reader.pos + entries_bytes,
            extra: reader.remaining() - entries_bytes,
        });
    }
    let mut loader = Loader::new(allocated, identifiers)?;
    let start = reader.pos;
    for (index, entry) in reader.bytes[start..].chunks_exact(ENTRY_BYTES).enumerate() {
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&entry[..16]);
        let mut word = [0u8; 8];
        word.copy_from_slice(&entry[16..]);
        loader
            .push(u128::from_le_bytes(hash), u64::from_le_bytes(word))
            .map_err(|problem| problem.at(index, start))?;
    }
    loader.finish(live, identifiers)
}

/// Reads the profile records of a version 1 body.
fn decode_records(mut reader: Reader<'_>) -> Result<Directory, DirectoryError> {
    let allocated = reader.u64()?;
    let live = reader.u64()?;
    let identifiers = reader.u64()?;
    // Bounds before allocating: every identifier takes 16 bytes and every
    // profile record at least RECORD_HEAD_BYTES + 16.
    let room = reader.remaining() as u64;
    if identifiers > room / size_of::<IdHash>() as u64 {
        return Err(DirectoryError::CountMismatch {
            what: "identifiers (more than the bytes can hold)",
            expected: room / size_of::<IdHash>() as u64,
            found: identifiers,
        });
    }
    if live > identifiers {
        return Err(DirectoryError::CountMismatch {
            what: "live profiles (more than identifiers)",
            expected: identifiers,
            found: live,
        });
    }
    let mut builder = RecordsBuilder::new(allocated, identifiers)?;
    let mut keys = Vec::new();
    for _ in 0..live {
        let profile = reader.u64()?;
        let flags = reader.u8()?;
        if flags & !1 != 0 {
            return Err(DirectoryError::InvalidProfile { profile, problem: "unknown flag bits" });
        }
        let count = reader.u32()? as usize;
        if count > reader.remaining() / size_of::<IdHash>() {
            return Err(DirectoryError::Truncated {
                offset: reader.pos,
                needed: count.saturating_mul(size_of::<IdHash>()),
                available: reader.remaining(),
            });
        }
        keys.clear();
        for _ in 0..count {
            keys.push(Key::from_hash(reader.u128()?));
        }
        builder.add(profile, flags & 1 == 1, &keys)?;
    }
    if reader.remaining() != 0 {
        return Err(DirectoryError::TrailingBytes { offset: reader.pos, extra: reader.remaining() });
    }
    builder.finish(live)
}

/// Rebuilds a directory from profile records (version 1 snapshots, serde),
/// checking every rule of that format on the way, then sorts the entries
/// and hands them to a [`Loader`].
struct RecordsBuilder {
    allocated: u64,
    identifiers: u64,
    /// (key, owner word), in record order.
    entries: Vec<(Key, u64)>,
    live: u64,
    last: ProfileId,
}

impl RecordsBuilder {
    /// `identifiers` must already be bounded by the input's size: it sizes
    /// the entries, and `allocated` (checked against it) the bitmaps.
    fn new(allocated: u64, identifiers: u64) -> Result<RecordsBuilder, DirectoryError> {
        if allocated > identifiers {
            return Err(DirectoryError::TooManyAllocated { allocated, identifiers });
        }
        let entries = Vec::with_capacity(identifiers as usize);
        Ok(RecordsBuilder { allocated, identifiers, entries, live: 0, last: 0 })
    }

    fn add(&mut self, profile: ProfileId, has_user: bool, keys: &[Key]) -> Result<(), DirectoryError> {
        let invalid = |problem| Err(DirectoryError::InvalidProfile { profile, problem });
        if profile <= self.last {
            return invalid("profile ids not in ascending order (or 0)");
        }
        if profile > self.allocated {
            return invalid("profile id beyond the ids allocated");
        }
        if keys.is_empty() {
            return invalid("live profile without identifiers");
        }
        let rest = if has_user { &keys[1..] } else { keys };
        if rest.windows(2).any(|w| w[0] >= w[1]) {
            return invalid("identifiers not in canonical order (user id first, then strictly ascending)");
        }
        let listed = self.entries.len() as u64 + keys.len() as u64;
        if listed > self.identifiers {
            return Err(DirectoryError::CountMismatch {
                what: "identifiers (more listed than declared)",
                expected: self.identifiers,
                found: listed,
            });
        }
        self.last = profile;
        self.live += 1;
        for (i, &key) in keys.iter().enumerate() {
            let word = if has_user && i == 0 { profile | USER_FLAG } else { profile };
            self.entries.push((key, word));
        }
        Ok(())
    }

    fn finish(mut self, declared_live: u64) -> Result<Directory, DirectoryError> {
        check_count("live profiles", declared_live, self.live)?;
        check_count("identifiers", self.identifiers, self.entries.len() as u64)?;
        // Stable, so that of two entries with one hash the first profile's
        // comes first, as the duplicate error reports it.
        self.entries.sort_by_key(|&(key, _)| key);
        let mut loader = Loader::new(self.allocated, self.entries.len() as u64)?;
        for &(key, word) in &self.entries {
            loader.push(key.hash(), word).map_err(EntryProblem::into_error)?;
        }
        loader.finish(self.live, self.identifiers)
    }
}

// ----- serde -----

/// One live profile as serde sees it.
#[derive(Serialize, Deserialize)]
struct ProfileRecord {
    id: ProfileId,
    has_user: bool,
    ids: Vec<IdHash>,
}

/// A directory as serde sees it, for deserializing; serializing streams the
/// same shape.
#[derive(Deserialize)]
struct DirectoryRecord {
    allocated: u64,
    profiles: Vec<ProfileRecord>,
}

/// The `profiles` field, streamed.
struct LiveProfiles<'a>(&'a Directory);

impl Serialize for LiveProfiles<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let lists = self.0.profile_lists();
        let mut seq = serializer.serialize_seq(Some(lists.len()))?;
        for (id, has_user, keys) in lists {
            let ids = keys.iter().map(|k| k.hash()).collect();
            seq.serialize_element(&ProfileRecord { id, has_user, ids })?;
        }
        seq.end()
    }
}

impl Serialize for Directory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Field order matches `DirectoryRecord`, which non-self-describing
        // formats (bincode) rely on.
        let mut st = serializer.serialize_struct("Directory", 2)?;
        st.serialize_field("allocated", &self.allocated)?;
        st.serialize_field("profiles", &LiveProfiles(self))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Directory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = DirectoryRecord::deserialize(deserializer)?;
        let identifiers = record.profiles.iter().map(|p| p.ids.len() as u64).sum();
        let live = record.profiles.len() as u64;
        let mut builder = RecordsBuilder::new(record.allocated, identifiers).map_err(D::Error::custom)?;
        let mut keys = Vec::new();
        for p in record.profiles {
            keys.clear();
            keys.extend(p.ids.into_iter().map(Key::from_hash));
            builder.add(p.id, p.has_user, &keys).map_err(D::Error::custom)?;
        }
        builder.finish(live).map_err(D::Error::custom)
    }
}

impl fmt::Display for MergeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "profile {} merged into {} (linked by {}:{})",
            self.from,
            self.into,
            self.linked_by.0.name(),
            self.linked_by.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    use IdentifierKind::{AnonymousId as Anon, UserId as User};

    /// Version 1 profile record head: id, flags, count.
    const RECORD_HEAD_BYTES: usize = 8 + 1 + 4;

    fn u(v: &str) -> (IdentifierKind, String) {
        (User, v.to_string())
    }

    fn a(v: &str) -> (IdentifierKind, String) {
        (Anon, v.to_string())
    }

    fn step(from: ProfileId, into: ProfileId, linked_by: (IdentifierKind, String)) -> MergeStep {
        MergeStep { from, into, linked_by }
    }

    fn res(
        profile: ProfileId,
        created: bool,
        merged: Vec<MergeStep>,
        gained: Vec<(IdentifierKind, String)>,
        dropped: Vec<(IdentifierKind, String)>,
    ) -> Resolution {
        Resolution { profile, created, merged, gained, dropped }
    }

    fn resolve(dir: &mut Directory, ids: &[(IdentifierKind, String)]) -> Resolution {
        let r = dir.resolve(ids).expect("non-empty message");
        dir.validate().expect("valid after resolve");
        r
    }

    impl Directory {
        /// The user id of a live profile, found by scanning the table.
        fn user_key(&self, profile: ProfileId) -> Option<Key> {
            self.entries().find(|&(_, p, user)| p == profile && user).map(|(key, _, _)| key)
        }

        /// A profile's identifiers in canonical order (empty when it is
        /// merged away or was never allocated).
        fn identifiers_of(&self, profile: ProfileId) -> Vec<Key> {
            let lists = self.profile_lists();
            lists.into_iter().find(|(p, _, _)| *p == profile).map(|(_, _, keys)| keys).unwrap_or_default()
        }
    }

    /// A directory in the version 1 format: profile records in id order,
    /// each with its identifiers in canonical order.
    fn encode_v1(dir: &Directory) -> Vec<u8> {
        let lists = dir.profile_lists();
        let hashes: Vec<(u64, u8, Vec<u128>)> = lists
            .iter()
            .map(|(p, user, keys)| (*p, u8::from(*user), keys.iter().map(|k| k.hash()).collect()))
            .collect();
        let records: Vec<(u64, u8, &[u128])> =
            hashes.iter().map(|(p, f, h)| (*p, *f, h.as_slice())).collect();
        sealed(&body(dir.next_profile() - 1, dir.profiles(), dir.identifiers(), &records))
    }

    #[test]
    fn id_hash_is_stable_and_kind_sensitive() {
        // Hashes are persisted in snapshots: these values must never change.
        assert_eq!(id_hash(User, "u1"), 0x48bce418e36117b91c4eb657f86fd3d9);
        assert_eq!(id_hash(Anon, "u1"), 0x3c45ffb008bc21638e7fdc3bc693c564);
        assert_eq!(id_hash(User, "u1"), xxh3_128(b"\x01u1"));
        assert_ne!(id_hash(User, "u1"), id_hash(Anon, "u1"));
        let long = "x".repeat(1000);
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(long.as_bytes());
        assert_eq!(id_hash(User, &long), xxh3_128(&bytes));
        let edge = "y".repeat(256);
        let mut bytes = vec![2u8];
        bytes.extend_from_slice(edge.as_bytes());
        assert_eq!(id_hash(Anon, &edge), xxh3_128(&bytes));
    }

    #[test]
    fn empty_message_is_an_error() {
        let mut dir = Directory::new();
        assert_eq!(dir.resolve(&[]), Err(DirectoryError::NoIdentifiers));
        assert_eq!(dir.profiles(), 0);
        assert_eq!(dir.next_profile(), 1);
    }

    #[test]
    fn anonymous_browsing_then_identify() {
        let mut dir = Directory::new();
        assert_eq!(resolve(&mut dir, &[a("A")]), res(1, true, vec![], vec![a("A")], vec![]));
        // A second anonymous visit changes nothing.
        assert_eq!(resolve(&mut dir, &[a("A")]), res(1, false, vec![], vec![], vec![]));
        // Identify: the anonymous profile gains the user id, no merge.
        assert_eq!(resolve(&mut dir, &[u("U"), a("A")]), res(1, false, vec![], vec![u("U")], vec![]));
        assert_eq!(dir.lookup(User, "U"), Some(1));
        assert_eq!(dir.lookup(Anon, "A"), Some(1));
        assert_eq!(dir.lookup(Anon, "U"), None);
        assert_eq!((dir.profiles(), dir.identifiers()), (1, 2));
        // The user id is recorded as the profile's.
        assert_eq!(dir.user_key(1), Some(Key::of(User, "U")));
        // Later messages with only the user id reach the same profile.
        assert_eq!(resolve(&mut dir, &[u("U")]), res(1, false, vec![], vec![], vec![]));
    }

    #[test]
    fn alias_merges_anonymous_profile_into_user_profile() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[u("U")]);
        resolve(&mut dir, &[a("A")]);
        // alias: userId U, previousId A.
        let r = resolve(&mut dir, &[u("U"), a("A")]);
        assert_eq!(r, res(1, false, vec![step(2, 1, a("A"))], vec![a("A")], vec![]));
        assert_eq!(dir.lookup(Anon, "A"), Some(1));
        assert_eq!((dir.profiles(), dir.identifiers()), (1, 2));
        // The merged-away id is never reused.
        assert_eq!(resolve(&mut dir, &[a("B")]).profile, 3);
    }

    #[test]
    fn anonymous_profiles_merge_into_the_first_created() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[a("A1")]);
        resolve(&mut dir, &[a("A2")]);
        let r = resolve(&mut dir, &[a("A2"), a("A1")]);
        assert_eq!(r, res(1, false, vec![step(2, 1, a("A2"))], vec![a("A2")], vec![]));
        // With a new user id too: the first created survives and gains it.
        resolve(&mut dir, &[a("A3")]);
        let r = resolve(&mut dir, &[u("U"), a("A3"), a("A1")]);
        assert_eq!(r, res(1, false, vec![step(3, 1, a("A3"))], vec![u("U"), a("A3")], vec![]));
        assert_eq!(dir.user_key(1), Some(Key::of(User, "U")));
    }

    #[test]
    fn survivor_is_the_profile_with_a_user_id_even_if_created_later() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[a("A")]);
        resolve(&mut dir, &[u("U")]);
        let r = resolve(&mut dir, &[u("U"), a("A")]);
        assert_eq!(r, res(2, false, vec![step(1, 2, a("A"))], vec![a("A")], vec![]));
        assert_eq!(dir.lookup(Anon, "A"), Some(2));
        assert!(dir.identifiers_of(1).is_empty() && !dir.is_live(1));
        assert!(!dir.has_user(1) && dir.has_user(2));
        assert_eq!(dir.profiles(), 1);
    }

    #[test]
    fn two_known_users_on_one_device() {
        // INGEST.md step 4's example.
        let mut dir = Directory::new();
        assert_eq!(resolve(&mut dir, &[u("U1"), a("A")]).profile, 1);
        // U2 is new, A belongs to U1: A is dropped, U2 gets its own profile.
        let r = resolve(&mut dir, &[u("U2"), a("A")]);
        assert_eq!(r, res(2, true, vec![], vec![u("U2")], vec![a("A")]));
        assert_eq!(dir.lookup(Anon, "A"), Some(1));
        assert_eq!(dir.lookup(User, "U2"), Some(2));
        // Now both users are known: A stays with U1, nothing gained.
        let r = resolve(&mut dir, &[u("U2"), a("A")]);
        assert_eq!(r, res(2, false, vec![], vec![], vec![a("A")]));
        // U1 with a fresh anonymous id simply gains it.
        let r = resolve(&mut dir, &[u("U1"), a("B")]);
        assert_eq!(r, res(1, false, vec![], vec![a("B")], vec![]));
        assert_eq!((dir.profiles(), dir.identifiers()), (2, 4));
    }

    #[test]
    fn three_way_merge() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[a("A1")]);
        resolve(&mut dir, &[a("A2")]);
        resolve(&mut dir, &[a("A3")]);
        let r = resolve(&mut dir, &[u("U"), a("A3"), a("A1"), a("A2")]);
        let merged = vec![step(2, 1, a("A2")), step(3, 1, a("A3"))];
        assert_eq!(r, res(1, false, merged, vec![u("U"), a("A3"), a("A2")], vec![]));
        assert_eq!((dir.profiles(), dir.identifiers()), (1, 4));
        for id in ["A1", "A2", "A3"] {
            assert_eq!(dir.lookup(Anon, id), Some(1));
        }
    }

    #[test]
    fn three_way_merge_into_the_user_profile_in_the_middle() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[a("A1")]);
        resolve(&mut dir, &[u("U"), a("A2")]);
        resolve(&mut dir, &[a("A3")]);
        let r = resolve(&mut dir, &[u("U"), a("A3"), a("A1")]);
        let merged = vec![step(1, 2, a("A1")), step(3, 2, a("A3"))];
        assert_eq!(r, res(2, false, merged, vec![a("A3"), a("A1")], vec![]));
        assert_eq!(dir.user_key(2), Some(Key::of(User, "U")));
        assert_eq!(dir.profiles(), 1);
    }

    #[test]
    fn merge_blocked_by_a_second_user_keeps_the_rest() {
        // U1's profile and U2's profile, plus an anonymous profile: a message
        // linking all three drops from the end until one user remains.
        let mut dir = Directory::new();
        resolve(&mut dir, &[u("U1"), a("A1")]);
        resolve(&mut dir, &[u("U2"), a("A2")]);
        resolve(&mut dir, &[a("A3")]);
        let r = resolve(&mut dir, &[u("U1"), a("A3"), a("A2")]);
        assert_eq!(r, res(1, false, vec![step(3, 1, a("A3"))], vec![a("A3")], vec![a("A2")]));
        assert_eq!(dir.lookup(Anon, "A2"), Some(2));
    }

    #[test]
    fn repeats_and_two_user_ids_in_one_message() {
        let mut dir = Directory::new();
        let r = resolve(&mut dir, &[a("A"), a("A")]);
        assert_eq!(r, res(1, true, vec![], vec![a("A")], vec![]));
        // Two user ids: drop from the end until one remains.
        let r = resolve(&mut dir, &[u("U1"), u("U2"), a("B")]);
        assert_eq!(r, res(2, true, vec![], vec![u("U1")], vec![a("B"), u("U2")]));
        assert_eq!(dir.lookup(User, "U2"), None);
        assert_eq!(dir.lookup(Anon, "B"), None);
        // The same user id twice is one identifier.
        let r = resolve(&mut dir, &[u("U1"), u("U1"), a("A")]);
        assert_eq!(r, res(2, false, vec![step(1, 2, a("A"))], vec![a("A")], vec![]));
    }

    #[test]
    fn heap_bytes_follow_the_table() {
        // The per-profile lists this test used to check are gone: a profile
        // costs two bits, an identifier its table slot.
        let mut dir = Directory::new();
        assert_eq!(dir.heap_bytes(), 0);
        resolve(&mut dir, &[u("U"), a("A")]);
        for i in 0..100 {
            resolve(&mut dir, &[u("U"), a(&format!("B{i}"))]);
        }
        assert_eq!(dir.identifiers(), 102);
        assert_eq!(dir.table.buckets, 128);
        let table = dir.table.slots.capacity() * size_of::<Slot>();
        assert!(table >= 128 * size_of::<Slot>());
        assert!(dir.heap_bytes() >= table && dir.heap_bytes() < table + 1024);
        // A clone is valid and counts its own capacities.
        let clone = dir.clone();
        clone.validate().expect("valid clone");
        assert!(clone.heap_bytes() <= dir.heap_bytes());
    }

    /// A directory with merges, dropped ids and dead slots at the end.
    fn sample() -> Directory {
        let mut dir = Directory::new();
        for ids in [
            vec![a("A1")],
            vec![u("U1"), a("A1")],
            vec![a("A2")],
            vec![u("U2"), a("A3")],
            vec![u("U2"), a("A2")],
            vec![u("U3"), a("A2")],
            vec![a("A4")],
            vec![a("A5")],
            vec![a("A5"), a("A4")],
            vec![a("A6")],
            vec![a("A6"), a("A4")],
        ] {
            resolve(&mut dir, &ids);
        }
        dir
    }

    fn follow_up() -> Vec<Vec<(IdentifierKind, String)>> {
        vec![
            vec![u("U4"), a("A4")],
            vec![u("U1"), a("A7")],
            vec![u("U5"), a("A1")],
            vec![a("A8")],
            vec![u("U2"), a("A8"), a("A6")],
        ]
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut dir = sample();
        let bytes = dir.encode();
        let mut back = Directory::decode(&bytes).expect("decodes");
        back.validate().expect("valid");
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.next_profile(), dir.next_profile());
        assert_eq!((back.profiles(), back.identifiers()), (dir.profiles(), dir.identifiers()));
        // Deterministic: the same history gives the same bytes.
        assert_eq!(sample().encode(), bytes);
        // Both continue identically.
        for ids in follow_up() {
            assert_eq!(resolve(&mut dir, &ids), resolve(&mut back, &ids));
        }
        assert_eq!(dir.encode(), back.encode());
        // The empty directory too.
        let empty = Directory::decode(&Directory::new().encode()).expect("decodes");
        assert_eq!(empty.next_profile(), 1);
    }

    #[test]
    fn serde_round_trip_matches_encode() {
        let dir = sample();
        let json = serde_json::to_string(&dir).expect("serializes");
        let back: Directory = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.encode(), dir.encode());
        assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
        // Inconsistent content is refused with the directory's reason.
        let dup = r#"{"allocated":2,"profiles":[{"id":1,"has_user":false,"ids":[5]},{"id":2,"has_user":false,"ids":[5]}]}"#;
        let err = serde_json::from_str::<Directory>(dup).expect_err("duplicate");
        assert!(err.to_string().contains("owned by both profile 1 and profile 2"), "{err}");
        let many = r#"{"allocated":9,"profiles":[{"id":1,"has_user":false,"ids":[5]}]}"#;
        let err = serde_json::from_str::<Directory>(many).expect_err("too many allocated");
        assert!(err.to_string().contains("9 profile ids allocated"), "{err}");
    }

    #[test]
    fn decode_refuses_truncated_and_corrupt_bytes() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Directory::decode(&bytes[..len]).is_err(), "truncated to {len} bytes");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            assert!(Directory::decode(&bad).is_err(), "byte {i} flipped");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(Directory::decode(&padded), Err(DirectoryError::LengthMismatch { .. })));
        assert!(matches!(Directory::decode(&bytes[..10]), Err(DirectoryError::Truncated { .. })));
        assert!(matches!(Directory::decode(b"JUNKJUNKJUNK"), Err(DirectoryError::BadMagic { .. })));
        let mut flipped = bytes.clone();
        flipped[HEADER_BYTES] ^= 1;
        let err = Directory::decode(&flipped).expect_err("corrupt");
        assert!(matches!(err, DirectoryError::ChecksumMismatch { .. }));
        assert!(err.to_string().contains("checksum mismatch"));
        let mut version = bytes.clone();
        version[4] = 9;
        assert_eq!(
            Directory::decode(&version).expect_err("version"),
            DirectoryError::UnsupportedVersion { found: 9, supported: FORMAT_VERSION }
        );
    }

    /// A version 1 snapshot with a valid header and checksum around `body`
    /// (the part after the length field).
    fn sealed(body: &[u8]) -> Vec<u8> {
        sealed_as(LEGACY_FORMAT_VERSION, body)
    }

    /// A snapshot of `version` with a valid header and checksum around
    /// `body`.
    fn sealed_as(version: u32, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&((16 + body.len() + 4) as u64).to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// A version 1 body: header counts, then profile records.
    fn body(allocated: u64, live: u64, identifiers: u64, profiles: &[(u64, u8, &[u128])]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [allocated, live, identifiers] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for &(id, flags, ids) in profiles {
            out.extend_from_slice(&id.to_le_bytes());
            out.push(flags);
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for h in ids {
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        out
    }

    /// Version 1 snapshots (profile records), read by the legacy path.
    #[test]
    fn decode_refuses_inconsistent_content_with_a_valid_checksum() {
        let ok = sealed(&body(2, 1, 2, &[(2, 1, &[9, 3])]));
        let dir = Directory::decode(&ok).expect("valid: user id first, then ascending");
        assert_eq!(dir.lookup_hash(9), Some(2));
        assert_eq!(dir.next_profile(), 3);

        let cases: Vec<(Vec<u8>, DirectoryError)> = vec![
            (
                sealed(&body(2, 2, 2, &[(1, 0, &[5]), (2, 0, &[5])])),
                DirectoryError::DuplicateIdentifier { hash: 5, first: 1, second: 2 },
            ),
            (
                sealed(&body(2, 2, 2, &[(2, 0, &[5]), (1, 0, &[6])])),
                DirectoryError::InvalidProfile {
                    profile: 1,
                    problem: "profile ids not in ascending order (or 0)",
                },
            ),
            (
                sealed(&body(1, 1, 1, &[(0, 0, &[5])])),
                DirectoryError::InvalidProfile {
                    profile: 0,
                    problem: "profile ids not in ascending order (or 0)",
                },
            ),
            (
                sealed(&body(1, 1, 2, &[(3, 0, &[5, 6])])),
                DirectoryError::InvalidProfile { profile: 3, problem: "profile id beyond the ids allocated" },
            ),
            (
                sealed(&body(2, 2, 2, &[(1, 0, &[]), (2, 0, &[5, 6])])),
                DirectoryError::InvalidProfile { profile: 1, problem: "live profile without identifiers" },
            ),
            (
                sealed(&body(1, 1, 2, &[(1, 0, &[6, 5])])),
                DirectoryError::InvalidProfile {
                    profile: 1,
                    problem: "identifiers not in canonical order (user id first, then strictly ascending)",
                },
            ),
            (
                sealed(&body(1, 1, 1, &[(1, 2, &[5])])),
                DirectoryError::InvalidProfile { profile: 1, problem: "unknown flag bits" },
            ),
            (
                sealed(&body(3, 1, 1, &[(1, 0, &[5])])),
                DirectoryError::TooManyAllocated { allocated: 3, identifiers: 1 },
            ),
            (
                sealed(&body(1, 1, 1, &[(1, 0, &[5, 6])])),
                DirectoryError::CountMismatch {
                    what: "identifiers (more listed than declared)",
                    expected: 1,
                    found: 2,
                },
            ),
            (
                sealed(&body(2, 2, 3, &[(1, 0, &[5]), (2, 0, &[6])])),
                DirectoryError::CountMismatch { what: "identifiers", expected: 3, found: 2 },
            ),
            (
                sealed(&body(u64::MAX, 1, u64::MAX, &[(1, 0, &[5])])),
                DirectoryError::CountMismatch {
                    what: "identifiers (more than the bytes can hold)",
                    expected: 1,
                    found: u64::MAX,
                },
            ),
            (
                sealed(&body(1, 2, 1, &[(1, 0, &[5])])),
                DirectoryError::CountMismatch {
                    what: "live profiles (more than identifiers)",
                    expected: 1,
                    found: 2,
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Directory::decode(&bytes).expect_err("inconsistent"), expected, "{expected}");
        }
        // A count that claims more identifiers than the bytes hold.
        let mut huge = body(1, 1, 1, &[]);
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.push(0);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(Directory::decode(&sealed(&huge)), Err(DirectoryError::Truncated { .. })));
        // Extra bytes after the last record.
        let mut extra = body(1, 1, 1, &[(1, 0, &[5])]);
        extra.extend_from_slice(&[0; 16]);
        assert_eq!(
            Directory::decode(&sealed(&extra)).expect_err("trailing"),
            DirectoryError::TrailingBytes { offset: HEADER_BYTES + RECORD_HEAD_BYTES + 16, extra: 16 }
        );
    }

    #[test]
    fn merge_step_displays_its_link() {
        let s = step(3, 1, a("A3"));
        assert_eq!(s.to_string(), "profile 3 merged into 1 (linked by anonymous_id:A3)");
    }

    #[test]
    fn decode_reads_version_1_snapshots() {
        let dir = sample();
        let old = encode_v1(&dir);
        let back = Directory::decode(&old).expect("a version 1 snapshot decodes");
        back.validate().expect("valid");
        assert_eq!(back.encode(), dir.encode());
        assert_eq!(Directory::decode(&encode_v1(&Directory::new())).expect("empty").next_profile(), 1);
    }

    /// A version 2 body: header counts, then (hash, owner word) entries.
    fn entries_body(allocated: u64, live: u64, identifiers: u64, entries: &[(u128, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [allocated, live, identifiers] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for &(hash, word) in entries {
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    fn sealed_v2(body: &[u8]) -> Vec<u8> {
        sealed_as(FORMAT_VERSION, body)
    }

    #[test]
    fn decode_v2_refuses_inconsistent_content_with_a_valid_checksum() {
        let ok = sealed_v2(&entries_body(2, 1, 2, &[(3, 2), (9, 2 | USER_FLAG)]));
        let dir = Directory::decode(&ok).expect("valid: profile 1 merged away, 2 owns both");
        assert_eq!((dir.lookup_hash(3), dir.lookup_hash(9), dir.lookup_hash(4)), (Some(2), Some(2), None));
        assert_eq!((dir.next_profile(), dir.profiles(), dir.identifiers()), (3, 1, 2));
        assert!(dir.has_user(2) && !dir.is_live(1));
        assert_eq!(dir.encode(), ok);

        let entry = |index: u64| (HEADER_BYTES + index as usize * ENTRY_BYTES) as u64;
        let cases: Vec<(Vec<u8>, DirectoryError)> = vec![
            (
                sealed_v2(&entries_body(1, 1, 2, &[(9, 1), (3, 1)])),
                DirectoryError::InvalidEntry {
                    index: 1,
                    offset: entry(1),
                    problem: "identifier hashes not in strictly ascending order",
                },
            ),
            (
                sealed_v2(&entries_body(2, 2, 2, &[(5, 1), (5, 2)])),
                DirectoryError::DuplicateIdentifier { hash: 5, first: 1, second: 2 },
            ),
            (
                sealed_v2(&entries_body(1, 1, 1, &[(5, 0)])),
                DirectoryError::InvalidProfile {
                    profile: 0,
                    problem: "identifier owned by profile 0, never allocated",
                },
            ),
            (
                sealed_v2(&entries_body(1, 1, 1, &[(5, USER_FLAG)])),
                DirectoryError::InvalidProfile {
                    profile: 0,
                    problem: "identifier owned by profile 0, never allocated",
                },
            ),
            (
                sealed_v2(&entries_body(1, 1, 2, &[(5, 1), (6, 2)])),
                DirectoryError::InvalidProfile { profile: 2, problem: "profile id beyond the ids allocated" },
            ),
            (
                sealed_v2(&entries_body(1, 1, 2, &[(5, 1), (6, u64::MAX)])),
                DirectoryError::InvalidProfile {
                    profile: PROFILE_BITS,
                    problem: "profile id beyond the ids allocated",
                },
            ),
            (
                sealed_v2(&entries_body(1, 1, 2, &[(5, 1 | USER_FLAG), (6, 1 | USER_FLAG)])),
                DirectoryError::InvalidProfile { profile: 1, problem: "profile owns two user ids" },
            ),
            (
                sealed_v2(&entries_body(2, 2, 2, &[(5, 1), (6, 1)])),
                DirectoryError::CountMismatch { what: "live profiles", expected: 2, found: 1 },
            ),
            (
                sealed_v2(&entries_body(3, 2, 2, &[(5, 1), (6, 2)])),
                DirectoryError::TooManyAllocated { allocated: 3, identifiers: 2 },
            ),
            (
                sealed_v2(&entries_body(1, 1, u64::MAX, &[(5, 1)])),
                DirectoryError::CountMismatch {
                    what: "identifiers (more than the bytes can hold)",
                    expected: 1,
                    found: u64::MAX,
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Directory::decode(&bytes).expect_err("inconsistent"), expected, "{expected}");
        }
        // Bytes after the entries, whole entries or not.
        let mut extra = entries_body(1, 1, 1, &[(5, 1)]);
        extra.extend_from_slice(&[0; 10]);
        assert_eq!(
            Directory::decode(&sealed_v2(&extra)).expect_err("trailing"),
            DirectoryError::TrailingBytes { offset: HEADER_BYTES + ENTRY_BYTES, extra: 10 }
        );
        let extra = entries_body(1, 1, 1, &[(5, 1), (6, 1)]);
        assert_eq!(
            Directory::decode(&sealed_v2(&extra)).expect_err("trailing"),
            DirectoryError::TrailingBytes { offset: HEADER_BYTES + ENTRY_BYTES, extra: ENTRY_BYTES }
        );
        // Half an entry missing.
        let mut short = entries_body(1, 1, 2, &[(5, 1), (6, 1)]);
        short.truncate(short.len() - 12);
        assert!(matches!(
            Directory::decode(&sealed_v2(&short)),
            Err(DirectoryError::CountMismatch { what: "identifiers (more than the bytes can hold)", .. })
        ));
        // Every error names its place in words.
        let err =
            Directory::decode(&sealed_v2(&entries_body(1, 1, 2, &[(9, 1), (3, 1)]))).expect_err("order");
        assert_eq!(
            err.to_string(),
            format!(
                "directory snapshot identifier entry 1 (byte {}): identifier hashes not in strictly ascending order",
                entry(1)
            )
        );
    }

    /// Keys that crowd the table: equal upper halves (one home), upper
    /// halves at the top of the range (runs into the tail), and spread ones.
    fn crowded_keys() -> Vec<Key> {
        let mut keys = Vec::new();
        for lo in 0..20 {
            keys.push(Key { hi: 1 << 40, lo: lo * 7 });
        }
        for i in 0..40 {
            keys.push(Key { hi: u64::MAX - i, lo: i });
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            keys.push(Key { hi: x, lo: x.rotate_left(17) });
        }
        keys
    }

    #[test]
    fn table_layout_is_the_same_whatever_the_insertion_order() {
        let keys = crowded_keys();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let mut placer = Placer::new(buckets_for(sorted.len()));
        for (i, &key) in sorted.iter().enumerate() {
            placer.place(key, i as u64 + 1);
        }
        let reference = placer.finish();
        reference.validate().expect("placed table is canonical");
        assert!(reference.slots.len() > reference.buckets, "the crowded keys reach the tail");
        let owner = |key: Key| sorted.binary_search(&key).map(|i| i as u64 + 1).unwrap_or(0);
        let mut order = keys.clone();
        let mut x = 99u64;
        for round in 0..6 {
            // Deterministic shuffles, plus ascending and descending orders.
            match round {
                0 => order.sort_unstable(),
                1 => order.sort_unstable_by(|a, b| b.cmp(a)),
                _ => {
                    for i in (1..order.len()).rev() {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        order.swap(i, (x >> 33) as usize % (i + 1));
                    }
                }
            }
            let mut table = Table::default();
            for (n, &key) in order.iter().enumerate() {
                table.insert(key, owner(key));
                if n % 37 == 0 {
                    table.validate().expect("canonical after every insert");
                }
            }
            table.validate().expect("canonical");
            assert_eq!(table.slots, reference.slots, "insertion order {round}");
            assert_eq!((table.buckets, table.len), (reference.buckets, reference.len));
            for &key in &keys {
                assert_eq!(table.owner_word(key), Some(owner(key)));
                let absent = Key { hi: key.hi, lo: key.lo ^ 1 };
                if sorted.binary_search(&absent).is_err() {
                    assert_eq!(table.owner_word(absent), None);
                }
            }
            assert_eq!(table.owner_word(Key { hi: u64::MAX, lo: u64::MAX }), None);
            assert_eq!(table.owner_word(Key { hi: 0, lo: 0 }), None);
        }
    }

    #[test]
    fn buckets_follow_the_growth_sequence() {
        assert_eq!(buckets_for(0), 0);
        let sizes: Vec<usize> = [1, 6, 7, 9, 10, 13, 19, 20, 26, 103].into_iter().map(buckets_for).collect();
        assert_eq!(sizes, [8, 8, 12, 12, 16, 24, 24, 32, 48, 192]);
        let mut previous = buckets_for(1);
        for n in 1..100_000usize {
            let buckets = buckets_for(n);
            assert!(fits(n, buckets), "{n} identifiers overfill {buckets} buckets");
            if buckets != previous {
                // Just grown: more than 8/15 full (4/5 of the last step, ×2/3).
                assert!(n * 15 > buckets * 8, "{n} identifiers underfill {buckets} buckets");
                previous = buckets;
            }
        }
    }

    #[test]
    fn merged_profiles_forward_to_the_live_one_in_one_step() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[a("A1")]);
        resolve(&mut dir, &[a("A2")]);
        resolve(&mut dir, &[a("A3")]);
        // 2 into 1, then 3 into 1: 1 has absorbed two profiles.
        resolve(&mut dir, &[a("A2"), a("A1")]);
        resolve(&mut dir, &[a("A3"), a("A1")]);
        // A user profile created later absorbs 1, and with it 2 and 3.
        resolve(&mut dir, &[u("U")]);
        let r = resolve(&mut dir, &[u("U"), a("A2")]);
        assert_eq!(r, res(4, false, vec![step(1, 4, a("A2"))], vec![a("A2")], vec![]));
        for id in ["A1", "A2", "A3"] {
            assert_eq!(dir.lookup(Anon, id), Some(4));
        }
        let mut forwards: Vec<(ProfileId, ProfileId)> = dir.forward.iter().copied().collect();
        forwards.sort_unstable();
        assert_eq!(forwards, [(1, 4), (2, 4), (3, 4)]);
        assert_eq!(dir.absorbed.len(), 1);
        assert_eq!(dir.identifiers_of(4).len(), 4);
        // A snapshot resolves the owners: the decoded copy forwards nothing
        // and encodes alike.
        let bytes = dir.encode();
        let mut back = Directory::decode(&bytes).expect("decodes");
        assert!(back.forward.is_empty() && back.absorbed.is_empty());
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.lookup(Anon, "A3"), Some(4));
        for ids in [vec![a("B")], vec![a("B"), a("A3")], vec![u("V"), a("C")]] {
            assert_eq!(resolve(&mut dir, &ids), resolve(&mut back, &ids));
        }
        assert_eq!(dir.encode(), back.encode());
    }

    #[test]
    fn validate_finds_broken_invariants() {
        let dir = sample();
        dir.validate().expect("valid");
        /// Breaks one invariant of a valid directory.
        type Breaking = fn(&mut Directory);
        let broken: Vec<(&str, Breaking)> = vec![
            ("live count", |d| d.live += 1),
            ("user bit", |d| clear_bit(&mut d.users, 2)),
            ("merged bit", |d| set_bit(&mut d.merged, 2)),
            ("allocated", |d| d.allocated = d.table.len as u64 + 64),
            ("entry moved", |d| {
                let pos = d.table.slots.iter().position(|s| s[OWNER] != 0).expect("an entry");
                let len = d.table.slots.len();
                d.table.slots.swap(pos, len - 1);
            }),
            ("forward", |d| d.forward.clear()),
            ("entry owner", |d| {
                let pos = d.table.slots.iter().position(|s| s[OWNER] != 0).expect("an entry");
                d.table.slots[pos][OWNER] = 999;
            }),
        ];
        for (what, breaking) in broken {
            let mut d = dir.clone();
            breaking(&mut d);
            assert!(d.validate().is_err(), "{what}");
        }
    }

    #[test]
    fn many_profiles_round_trip() {
        // Enough identifiers for several table growths and long runs, with
        // both kinds of merge.
        let mut dir = Directory::new();
        for i in 0..3000 {
            resolve_quietly(&mut dir, &[u(&format!("u{i}")), a(&format!("a{i}"))]);
            if i % 10 == 0 {
                resolve_quietly(&mut dir, &[a(&format!("m{i}"))]);
                resolve_quietly(&mut dir, &[a(&format!("n{i}"))]);
                resolve_quietly(&mut dir, &[a(&format!("n{i}")), a(&format!("m{i}"))]);
                resolve_quietly(&mut dir, &[u(&format!("u{}", i / 2)), a(&format!("m{i}"))]);
            }
        }
        dir.validate().expect("valid");
        assert_eq!(dir.identifiers(), 6600);
        assert_eq!(dir.profiles(), 3000);
        let bytes = dir.encode();
        let back = Directory::decode(&bytes).expect("decodes");
        back.validate().expect("valid");
        assert_eq!(back.encode(), bytes);
        assert_eq!(Directory::decode(&encode_v1(&dir)).expect("version 1").encode(), bytes);
        for i in (0..3000).step_by(7) {
            let id = a(&format!("a{i}"));
            assert_eq!(back.lookup(id.0, &id.1), dir.lookup(id.0, &id.1));
            // Each tenth profile is followed by two anonymous ones.
            assert_eq!(back.lookup(id.0, &id.1), Some(i as u64 + 1 + 2 * (i as u64).div_ceil(10)));
        }
    }

    #[test]
    fn large_snapshots_check_their_checksum_alongside_decoding() {
        // Past PARALLEL_CHECKSUM_BYTES: the checksum runs on a second thread.
        let n = (PARALLEL_CHECKSUM_BYTES / ENTRY_BYTES + 100) as u64;
        let allocated = n / 2;
        let step = u128::MAX / u128::from(n);
        let entries: Vec<(u128, u64)> = (0..n)
            .map(|i| {
                let profile = i % allocated + 1;
                let word = if i < allocated { profile | USER_FLAG } else { profile };
                (u128::from(i) * step, word)
            })
            .collect();
        let bytes = sealed_v2(&entries_body(allocated, allocated, n, &entries));
        assert!(bytes.len() > PARALLEL_CHECKSUM_BYTES);
        let dir = Directory::decode(&bytes).expect("decodes");
        assert_eq!((dir.identifiers(), dir.profiles(), dir.next_profile()), (n, allocated, allocated + 1));
        assert_eq!(dir.lookup_hash(step * 7), Some(8));
        assert_eq!(dir.encode(), bytes);
        // A flipped byte anywhere is the checksum's to report.
        for at in [HEADER_BYTES + 5, bytes.len() / 2, bytes.len() - CHECKSUM_BYTES - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(
                matches!(Directory::decode(&bad), Err(DirectoryError::ChecksumMismatch { .. })),
                "byte {at} flipped"
            );
        }
        // Content errors with a valid checksum are found at their entry.
        let mut swapped = entries.clone();
        swapped.swap(1000, 1001);
        let err = Directory::decode(&sealed_v2(&entries_body(allocated, allocated, n, &swapped)))
            .expect_err("order");
        assert!(matches!(err, DirectoryError::InvalidEntry { index: 1001, .. }), "{err}");
        let mut two_users = entries;
        two_users[(allocated + 3) as usize].1 |= USER_FLAG;
        let err = Directory::decode(&sealed_v2(&entries_body(allocated, allocated, n, &two_users)))
            .expect_err("two users");
        assert_eq!(err, DirectoryError::InvalidProfile { profile: 4, problem: "profile owns two user ids" });
    }

    fn resolve_quietly(dir: &mut Directory, ids: &[(IdentifierKind, String)]) -> Resolution {
        dir.resolve(ids).expect("non-empty message")
    }

    // ----- property test against a naive model -----

    /// The rules of INGEST.md written as plainly as possible: profiles as
    /// lists of identifier strings, found by linear scans.
    #[derive(Default)]
    struct Naive {
        profiles: Vec<(ProfileId, Vec<(IdentifierKind, String)>)>,
        created: ProfileId,
    }

    impl Naive {
        fn owner(&self, id: &(IdentifierKind, String)) -> Option<ProfileId> {
            self.profiles.iter().find(|(_, ids)| ids.contains(id)).map(|(p, _)| *p)
        }

        fn ids_of(&self, p: ProfileId) -> Vec<(IdentifierKind, String)> {
            self.profiles.iter().find(|(q, _)| *q == p).map(|(_, ids)| ids.clone()).unwrap_or_default()
        }

        fn resolve(&mut self, message: &[(IdentifierKind, String)]) -> Resolution {
            let mut msg: Vec<(IdentifierKind, String)> = Vec::new();
            for id in message {
                if !msg.contains(id) {
                    msg.push(id.clone());
                }
            }
            let mut dropped = Vec::new();
            loop {
                let mut users = BTreeSet::new();
                for id in &msg {
                    let mut all = vec![id.clone()];
                    if let Some(p) = self.owner(id) {
                        all.extend(self.ids_of(p));
                    }
                    users.extend(all.into_iter().filter(|(k, _)| *k == User).map(|(_, v)| v));
                }
                if users.len() <= 1 {
                    break;
                }
                dropped.push(msg.pop().unwrap());
            }
            let owners: BTreeSet<ProfileId> = msg.iter().filter_map(|id| self.owner(id)).collect();
            if owners.is_empty() {
                self.created += 1;
                let p = self.created;
                self.profiles.push((p, msg.clone()));
                return Resolution { profile: p, created: true, merged: vec![], gained: msg, dropped };
            }
            let survivor = owners
                .iter()
                .copied()
                .find(|&p| self.ids_of(p).iter().any(|(k, _)| *k == User))
                .unwrap_or(*owners.iter().next().unwrap());
            let before = self.ids_of(survivor);
            let mut merged = Vec::new();
            for &from in owners.iter().filter(|&&p| p != survivor) {
                let linked_by = msg.iter().find(|id| self.owner(id) == Some(from)).unwrap().clone();
                let moved = self.ids_of(from);
                self.profiles.retain(|(p, _)| *p != from);
                let target = self.profiles.iter_mut().find(|(p, _)| *p == survivor).unwrap();
                target.1.extend(moved);
                merged.push(MergeStep { from, into: survivor, linked_by });
            }
            let gained: Vec<_> = msg.iter().filter(|id| !before.contains(id)).cloned().collect();
            for id in &msg {
                if self.owner(id).is_none() {
                    let target = self.profiles.iter_mut().find(|(p, _)| *p == survivor).unwrap();
                    target.1.push(id.clone());
                }
            }
            Resolution { profile: survivor, created: false, merged, gained, dropped }
        }
    }

    fn identifier() -> impl Strategy<Value = (IdentifierKind, String)> {
        prop_oneof![(0..4u8).prop_map(|i| u(&format!("u{i}"))), (0..8u8).prop_map(|i| a(&format!("a{i}"))),]
    }

    /// Mostly well-formed messages (at most one user id, then at most one
    /// anonymous id), with some arbitrary ones (repeats, two user ids, odd
    /// order).
    fn message() -> impl Strategy<Value = Vec<(IdentifierKind, String)>> {
        prop_oneof![
            3 => (proptest::option::of(0..4u8), proptest::option::of(0..8u8)).prop_map(|(user, anon)| {
                let mut ids = Vec::new();
                ids.extend(user.map(|i| u(&format!("u{i}"))));
                ids.extend(anon.map(|i| a(&format!("a{i}"))));
                if ids.is_empty() {
                    ids.push(a("a0"));
                }
                ids
            }),
            1 => proptest::collection::vec(identifier(), 1..5),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_the_naive_model(messages in proptest::collection::vec(message(), 1..40)) {
            let mut dir = Directory::new();
            let mut naive = Naive::default();
            for msg in &messages {
                let got = dir.resolve(msg).expect("non-empty");
                let want = naive.resolve(msg);
                prop_assert_eq!(&got, &want, "message {:?}", msg);
                prop_assert_eq!(dir.validate(), Ok(()));
                prop_assert_eq!(dir.profiles(), naive.profiles.len() as u64);
                let naive_ids: usize = naive.profiles.iter().map(|(_, ids)| ids.len()).sum();
                prop_assert_eq!(dir.identifiers(), naive_ids as u64);
                for i in 0..4 {
                    let id = u(&format!("u{i}"));
                    prop_assert_eq!(dir.lookup(id.0, &id.1), naive.owner(&id));
                }
                for i in 0..8 {
                    let id = a(&format!("a{i}"));
                    prop_assert_eq!(dir.lookup(id.0, &id.1), naive.owner(&id));
                }
            }
            // Every profile holds at most one user id, the first of its list.
            for (p, ids) in &naive.profiles {
                let users: Vec<_> = ids.iter().filter(|(k, _)| *k == User).collect();
                prop_assert!(users.len() <= 1, "profile {} holds {:?}", p, users);
                prop_assert_eq!(dir.user_key(*p), users.first().map(|(k, v)| Key::of(*k, v)));
            }
            // Snapshots round-trip to the same bytes.
            let bytes = dir.encode();
            let back = Directory::decode(&bytes).expect("decodes");
            prop_assert_eq!(back.validate(), Ok(()));
            prop_assert_eq!(&back.encode(), &bytes);
            // And so do version 1 snapshots of the same state.
            let old = Directory::decode(&encode_v1(&dir)).expect("version 1 decodes");
            prop_assert_eq!(&old.encode(), &bytes);
        }
    }
}
