//! The identifier directory: identifier → profile id, with the merge rules
//! of INGEST.md "Identity resolution".
//!
//! # Representation
//!
//! Tens of millions of identifiers must fit in memory, so the directory does
//! not keep identifier strings. An identifier is keyed by the 128-bit
//! [`id_hash`] of its kind and value (xxh3-128; a collision between two real
//! identifiers is as likely as two random 128-bit numbers being equal, which
//! we accept). Two structures hold the state:
//!
//! - `owners`: a `hashbrown::HashTable` of (hash, profile) entries, 24 bytes
//!   each plus one control byte. The table's own hash is the low 64 bits of
//!   the identifier hash, which is already uniformly distributed, so no
//!   hasher runs and no random seed exists.
//! - `slots`: slot `p - 1` holds profile `p`'s identifier hashes, empty once
//!   `p` has been merged away. When profile `p` has a `user_id` (bit `p - 1`
//!   of `users`), that user id's hash is the first element of its slot. A
//!   merge moves the absorbed slot's hashes to the survivor and re-points
//!   them in `owners`.
//!
//! Profile ids are allocated here, sequentially from 1, so "created first"
//! (INGEST.md step 5) means "smaller id".
//!
//! # Determinism
//!
//! The directory is replicated state machine data: applying the same
//! messages in the same order gives the same directory on every replica.
//! Nothing reads a clock or a random number, results never depend on the
//! iteration order of the hash table (only on lookups), and
//! [`Directory::encode`] writes profiles in id order with each profile's
//! identifiers in a canonical order, so equal states give equal bytes.
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

/// An [`IdHash`] stored as two `u64`s, so that table entries and identifier
/// lists have 8-byte alignment (a `u128` would pad a 24-byte entry to 32).
/// Field order makes the derived `Ord` agree with the `u128` order.
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

    /// The hash the table uses: the low half, uniformly distributed already.
    fn table_hash(self) -> u64 {
        self.lo
    }
}

/// One entry of the identifier table.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Key,
    profile: ProfileId,
}

fn entry_hash(entry: &Entry) -> u64 {
    entry.key.table_hash()
}

/// Identifier lists up to this many keys grow one key at a time, so that the
/// common profile (one to a few identifiers) carries no slack; longer lists
/// (a shared device, a heavily merged profile) grow by doubling so that
/// gaining one identifier stays amortised O(1).
const EXACT_GROWTH_KEYS: usize = 8;

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
        "directory snapshot format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// The version this build writes and reads.
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
    /// Bytes left over after the last profile record.
    #[error("directory snapshot has {extra} unexpected bytes after its last profile, at byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// A profile record that breaks a rule of the format.
    #[error("directory profile {profile}: {problem}")]
    InvalidProfile {
        /// The profile id in the record.
        profile: ProfileId,
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
/// `Serialize`/`Deserialize` are written by hand (hashbrown's serde support
/// is not enabled, and table order is not deterministic anyway): a directory
/// serializes as `{ allocated, profiles: [{ id, has_user, ids }] }` with
/// profiles in id order and each profile's identifier hashes in canonical
/// order (the user id first, then ascending), the same content as
/// [`Directory::encode`].
#[derive(Debug, Default)]
pub struct Directory {
    /// Identifier hash → owning profile.
    owners: HashTable<Entry>,
    /// Slot `p - 1`: profile `p`'s identifier hashes, its user id first when
    /// it has one; empty once `p` is merged away. `slots.len()` is the
    /// number of profile ids allocated.
    slots: Vec<Vec<Key>>,
    /// Bit `p - 1` is set when profile `p` has a user id.
    users: Vec<u64>,
    /// Profiles not merged away.
    live: u64,
    /// Sum of the slots' capacities, in keys, for [`Directory::heap_bytes`].
    list_capacity: usize,
}

impl Clone for Directory {
    /// Clones the state; the capacity count is recomputed because cloned
    /// lists do not keep their source's capacity.
    fn clone(&self) -> Self {
        let slots = self.slots.clone();
        let list_capacity = slots.iter().map(Vec::capacity).sum();
        Directory {
            owners: self.owners.clone(),
            slots,
            users: self.users.clone(),
            live: self.live,
            list_capacity,
        }
    }
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

impl Directory {
    /// An empty directory; the first profile it creates is 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves one message's identifiers per INGEST.md steps 1 to 5 and
    /// applies the result: new identifiers are registered, merged profiles'
    /// identifiers re-pointed to the survivor, and merged profiles removed.
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
            items.push(Item { index, key, kind: *kind, owner: self.owner_of(key) });
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
        self.owners.len() as u64
    }

    /// The id the next created profile will get.
    pub fn next_profile(&self) -> ProfileId {
        self.slots.len() as u64 + 1
    }

    /// Heap bytes used, approximated from capacities: the table's buckets
    /// (entry plus control byte), the slot vector, the identifier lists and
    /// the user bitmap. O(1).
    pub fn heap_bytes(&self) -> usize {
        let capacity = self.owners.capacity();
        // hashbrown keeps at most 7/8 of a power-of-two bucket count full
        // (all but one bucket below 8 buckets), plus one group of trailing
        // control bytes.
        let buckets = match capacity {
            0 => 0,
            1..=7 => (capacity + 1).next_power_of_two(),
            _ => (capacity * 8 / 7).next_power_of_two(),
        };
        let table = if buckets == 0 { 0 } else { buckets * (size_of::<Entry>() + 1) + 16 };
        table
            + self.slots.capacity() * size_of::<Vec<Key>>()
            + self.list_capacity * size_of::<Key>()
            + self.users.capacity() * size_of::<u64>()
    }

    /// Checks every invariant of the state: each listed identifier is in
    /// the table and points back to its profile, no identifier is listed
    /// twice, the table holds nothing else, the counters agree, merged-away
    /// slots are empty and carry no user bit, and no more profile ids are
    /// allocated than identifiers exist. O(identifiers); for tests, fuzzers
    /// and after loading a snapshot.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        let mut live = 0u64;
        let mut listed = 0u64;
        let mut capacity = 0usize;
        let mut sorted = Vec::new();
        for (index, keys) in self.slots.iter().enumerate() {
            let profile = index as u64 + 1;
            capacity += keys.capacity();
            if keys.is_empty() {
                if self.has_user(profile) {
                    return Err(invariant(profile, "merged-away profile still marked as having a user id"));
                }
                continue;
            }
            live += 1;
            listed += keys.len() as u64;
            for &key in keys {
                if self.owner_of(key) != Some(profile) {
                    return Err(invariant(
                        profile,
                        "listed identifier not owned by the profile in the table",
                    ));
                }
            }
            sorted.clear();
            sorted.extend_from_slice(keys);
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(invariant(profile, "identifier listed twice"));
            }
        }
        let users_beyond = self.users.iter().enumerate().any(|(word, &bits)| {
            (0..64).any(|bit| bits >> bit & 1 == 1 && word * 64 + bit >= self.slots.len())
        });
        if users_beyond {
            return Err(invariant(0, "user bit set beyond the allocated profiles"));
        }
        check_count("live profiles", live, self.live)?;
        check_count("listed identifiers", self.owners.len() as u64, listed)?;
        check_count("list capacity", capacity as u64, self.list_capacity as u64)?;
        let allocated = self.slots.len() as u64;
        if allocated > listed {
            return Err(DirectoryError::TooManyAllocated { allocated, identifiers: listed });
        }
        Ok(())
    }

    /// Serializes the directory to bytes; the same state gives the same
    /// bytes.
    ///
    /// Format (all integers little-endian): magic `CDIR`, version `u32`,
    /// total length `u64`, profile ids allocated `u64`, live profiles `u64`,
    /// identifiers `u64`; then per live profile, in id order: id `u64`,
    /// flags `u8` (bit 0: has a user id), identifier count `u32`, the
    /// identifier hashes as `u128` (the user id first, then ascending);
    /// finally the CRC-32 of everything before it. The identifier table is
    /// not written: it is rebuilt from the lists.
    pub fn encode(&self) -> Vec<u8> {
        let keys_bytes = self.owners.len() * size_of::<IdHash>();
        let records_bytes = self.live as usize * RECORD_HEAD_BYTES;
        let mut out = Vec::with_capacity(HEADER_BYTES + records_bytes + keys_bytes + CHECKSUM_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Total length, patched below.
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(self.slots.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.live.to_le_bytes());
        out.extend_from_slice(&(self.owners.len() as u64).to_le_bytes());
        let mut canonical = Vec::new();
        for (profile, has_user, keys) in self.live_profiles() {
            self.canonical_keys(has_user, keys, &mut canonical);
            out.extend_from_slice(&profile.to_le_bytes());
            out.push(u8::from(has_user));
            // A profile's identifiers are bounded by the table, which cannot
            // reach 2^32 entries per profile in memory; saturate regardless.
            out.extend_from_slice(&u32::try_from(canonical.len()).unwrap_or(u32::MAX).to_le_bytes());
            for key in &canonical {
                out.extend_from_slice(&key.hash().to_le_bytes());
            }
        }
        let total = (out.len() + CHECKSUM_BYTES) as u64;
        out[LENGTH_OFFSET..LENGTH_OFFSET + 8].copy_from_slice(&total.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Restores a directory written by [`Directory::encode`]. Corrupt,
    /// truncated or inconsistent bytes give an error naming what is wrong
    /// and where; nothing panics, and no allocation exceeds what the input's
    /// length can justify.
    pub fn decode(bytes: &[u8]) -> Result<Directory, DirectoryError> {
        let mut reader = Reader { bytes, pos: 0 };
        let magic = reader.array::<4>()?;
        if magic != MAGIC {
            return Err(DirectoryError::BadMagic { found: magic, expected: MAGIC });
        }
        let version = reader.u32()?;
        if version != FORMAT_VERSION {
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
        let computed = crc32fast::hash(&bytes[..body_end]);
        if stored != computed {
            return Err(DirectoryError::ChecksumMismatch { stored, computed });
        }
        // From here on, read only the body.
        let mut reader = Reader { bytes: &bytes[..body_end], pos: reader.pos };

        let allocated = reader.u64()?;
        let live = reader.u64()?;
        let identifiers = reader.u64()?;
        // Bounds before allocating: every identifier takes 16 bytes and
        // every profile record at least RECORD_HEAD_BYTES + 16.
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
        let mut builder = Builder::new(allocated, identifiers)?;
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
            let mut keys = Vec::with_capacity(count);
            for _ in 0..count {
                keys.push(Key::from_hash(reader.u128()?));
            }
            builder.add(profile, flags & 1 == 1, keys)?;
        }
        if reader.remaining() != 0 {
            return Err(DirectoryError::TrailingBytes { offset: reader.pos, extra: reader.remaining() });
        }
        builder.finish(Some(live))
    }

    // ----- internals -----

    fn owner_of(&self, key: Key) -> Option<ProfileId> {
        self.owners.find(key.table_hash(), |e| e.key == key).map(|e| e.profile)
    }

    fn slot_index(profile: ProfileId) -> usize {
        // Profile ids come from `slots.len() + 1`, so they fit a usize.
        (profile - 1) as usize
    }

    fn has_user(&self, profile: ProfileId) -> bool {
        let index = Self::slot_index(profile);
        self.users.get(index / 64).is_some_and(|word| word >> (index % 64) & 1 == 1)
    }

    fn set_user(&mut self, profile: ProfileId, on: bool) {
        let index = Self::slot_index(profile);
        if self.users.len() <= index / 64 {
            self.users.resize(index / 64 + 1, 0);
        }
        let bit = 1u64 << (index % 64);
        if on {
            self.users[index / 64] |= bit;
        } else {
            self.users[index / 64] &= !bit;
        }
    }

    /// The user id key of a profile, if any: the first of its list.
    fn user_key(&self, profile: ProfileId) -> Option<Key> {
        if self.has_user(profile) {
            self.slots[Self::slot_index(profile)].first().copied()
        } else {
            None
        }
    }

    /// True when the message's identifiers together with every profile
    /// owning one of them hold two different user ids.
    fn holds_two_user_ids(&self, items: &[Item]) -> bool {
        let mut seen: Option<Key> = None;
        for item in items {
            let user = match item.owner {
                Some(p) => self.user_key(p),
                None if item.kind == IdentifierKind::UserId => Some(item.key),
                None => None,
            };
            match (seen, user) {
                (_, None) => {}
                (None, Some(u)) => seen = Some(u),
                (Some(s), Some(u)) if s != u => return true,
                _ => {}
            }
        }
        false
    }

    /// Allocates the next profile id, with an empty list (filled by
    /// `register` right after).
    fn create(&mut self) -> ProfileId {
        self.slots.push(Vec::new());
        self.live += 1;
        self.slots.len() as u64
    }

    /// Grows a list for `additional` keys per [`EXACT_GROWTH_KEYS`], keeping
    /// `list_capacity` in step.
    fn reserve_keys(&mut self, index: usize, additional: usize) {
        let list = &mut self.slots[index];
        let before = list.capacity();
        let needed = list.len() + additional;
        if needed <= before {
            return;
        }
        if needed <= EXACT_GROWTH_KEYS {
            list.reserve_exact(additional);
        } else {
            list.reserve(additional);
        }
        self.list_capacity = self.list_capacity - before + list.capacity();
    }

    /// Registers an unowned identifier as `profile`'s.
    fn register(&mut self, key: Key, kind: IdentifierKind, profile: ProfileId) {
        self.owners.insert_unique(key.table_hash(), Entry { key, profile }, entry_hash);
        let index = Self::slot_index(profile);
        self.reserve_keys(index, 1);
        self.slots[index].push(key);
        if kind == IdentifierKind::UserId {
            // The guard lets a user id reach only a profile without one.
            assert!(
                !self.has_user(profile),
                "identity directory: profile {profile} would get a second user id"
            );
            self.set_user(profile, true);
            // The user id goes first in the list.
            self.slots[index].rotate_right(1);
        }
    }

    /// Merges profile `from` into `into`: re-points `from`'s identifiers and
    /// empties its slot.
    fn absorb(&mut self, from: ProfileId, into: ProfileId) {
        let from_index = Self::slot_index(from);
        let into_index = Self::slot_index(into);
        let keys = std::mem::take(&mut self.slots[from_index]);
        self.list_capacity -= keys.capacity();
        assert!(!keys.is_empty(), "identity directory: merging profile {from}, which is not live");
        for key in &keys {
            let entry = self.owners.find_mut(key.table_hash(), |e| e.key == *key);
            let Some(entry) = entry else {
                panic!("identity directory: identifier of profile {from} missing from the table");
            };
            assert_eq!(entry.profile, from, "identity directory: identifier listed under the wrong profile");
            entry.profile = into;
        }
        let from_user = self.has_user(from);
        // The survivor is the profile with a user id when there is one
        // (step 5), so `from` never brings one; handle it anyway so the
        // list order invariant holds whatever the caller.
        assert!(
            !(from_user && self.has_user(into)),
            "identity directory: merging profile {from} into {into} would give two user ids"
        );
        let old_len = self.slots[into_index].len();
        self.reserve_keys(into_index, keys.len());
        self.slots[into_index].extend_from_slice(&keys);
        if from_user {
            self.set_user(from, false);
            self.set_user(into, true);
            self.slots[into_index][..=old_len].rotate_right(1);
        }
        self.live -= 1;
    }

    /// Live profiles in id order: (id, has user id, identifier list).
    fn live_profiles(&self) -> impl Iterator<Item = (ProfileId, bool, &[Key])> + '_ {
        self.slots.iter().enumerate().filter(|(_, keys)| !keys.is_empty()).map(|(index, keys)| {
            let profile = index as u64 + 1;
            (profile, self.has_user(profile), keys.as_slice())
        })
    }

    /// `keys` in canonical order into `out`: the user id first, the rest
    /// ascending.
    fn canonical_keys(&self, has_user: bool, keys: &[Key], out: &mut Vec<Key>) {
        out.clear();
        out.extend_from_slice(keys);
        let rest = if has_user { &mut out[1..] } else { &mut out[..] };
        rest.sort_unstable();
    }
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
/// Format version written by [`Directory::encode`].
pub const FORMAT_VERSION: u32 = 1;
/// Where the total length sits in the header.
const LENGTH_OFFSET: usize = 8;
/// magic, version, length, allocated, live, identifiers.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 8;
/// id, flags, count.
const RECORD_HEAD_BYTES: usize = 8 + 1 + 4;
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

/// Rebuilds a directory from profile records (binary or serde), checking
/// every rule of the format on the way.
struct Builder {
    dir: Directory,
    allocated: u64,
    identifiers: u64,
    last: ProfileId,
}

impl Builder {
    /// `identifiers` must already be bounded by the input's size: it sizes
    /// the table, and `allocated` (checked against it) sizes the slots.
    fn new(allocated: u64, identifiers: u64) -> Result<Builder, DirectoryError> {
        if allocated > identifiers {
            return Err(DirectoryError::TooManyAllocated { allocated, identifiers });
        }
        let mut dir = Directory::new();
        dir.owners = HashTable::with_capacity(identifiers as usize);
        dir.slots = Vec::with_capacity(allocated as usize);
        Ok(Builder { dir, allocated, identifiers, last: 0 })
    }

    fn add(&mut self, profile: ProfileId, has_user: bool, keys: Vec<Key>) -> Result<(), DirectoryError> {
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
        let rest = if has_user { &keys[1..] } else { &keys[..] };
        if rest.windows(2).any(|w| w[0] >= w[1]) {
            return invalid("identifiers not in canonical order (user id first, then strictly ascending)");
        }
        if self.dir.owners.len() as u64 + keys.len() as u64 > self.identifiers {
            return Err(DirectoryError::CountMismatch {
                what: "identifiers (more listed than declared)",
                expected: self.identifiers,
                found: self.dir.owners.len() as u64 + keys.len() as u64,
            });
        }
        self.last = profile;
        // Merged-away profiles before this one keep empty slots.
        while (self.dir.slots.len() as u64) < profile - 1 {
            self.dir.slots.push(Vec::new());
        }
        for &key in &keys {
            match self.dir.owners.entry(key.table_hash(), |e| e.key == key, entry_hash) {
                TableEntry::Occupied(e) => {
                    return Err(DirectoryError::DuplicateIdentifier {
                        hash: key.hash(),
                        first: e.get().profile,
                        second: profile,
                    });
                }
                TableEntry::Vacant(v) => {
                    v.insert(Entry { key, profile });
                }
            }
        }
        self.dir.list_capacity += keys.capacity();
        self.dir.slots.push(keys);
        self.dir.live += 1;
        if has_user {
            self.dir.set_user(profile, true);
        }
        Ok(())
    }

    fn finish(mut self, declared_live: Option<u64>) -> Result<Directory, DirectoryError> {
        while (self.dir.slots.len() as u64) < self.allocated {
            self.dir.slots.push(Vec::new());
        }
        if let Some(live) = declared_live {
            check_count("live profiles", live, self.dir.live)?;
        }
        check_count("identifiers", self.identifiers, self.dir.owners.len() as u64)?;
        // The header bound checked allocated against the declared count,
        // which now equals the real one.
        debug_assert!(self.dir.validate().is_ok());
        Ok(self.dir)
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
/// same shape without building it.
#[derive(Deserialize)]
struct DirectoryRecord {
    allocated: u64,
    profiles: Vec<ProfileRecord>,
}

/// The `profiles` field, streamed.
struct LiveProfiles<'a>(&'a Directory);

impl Serialize for LiveProfiles<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let dir = self.0;
        let mut seq = serializer.serialize_seq(Some(dir.live as usize))?;
        let mut canonical = Vec::new();
        for (id, has_user, keys) in dir.live_profiles() {
            dir.canonical_keys(has_user, keys, &mut canonical);
            let ids = canonical.iter().map(|k| k.hash()).collect();
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
        st.serialize_field("allocated", &(self.slots.len() as u64))?;
        st.serialize_field("profiles", &LiveProfiles(self))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Directory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = DirectoryRecord::deserialize(deserializer)?;
        let identifiers = record.profiles.iter().map(|p| p.ids.len() as u64).sum();
        let mut builder = Builder::new(record.allocated, identifiers).map_err(D::Error::custom)?;
        for p in record.profiles {
            let keys = p.ids.into_iter().map(Key::from_hash).collect();
            builder.add(p.id, p.has_user, keys).map_err(D::Error::custom)?;
        }
        builder.finish(None).map_err(D::Error::custom)
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
        // The user id sits first in the list.
        assert_eq!(dir.slots[0][0], Key::of(User, "U"));
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
        assert_eq!(dir.slots[0][0], Key::of(User, "U"));
    }

    #[test]
    fn survivor_is_the_profile_with_a_user_id_even_if_created_later() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[a("A")]);
        resolve(&mut dir, &[u("U")]);
        let r = resolve(&mut dir, &[u("U"), a("A")]);
        assert_eq!(r, res(2, false, vec![step(1, 2, a("A"))], vec![a("A")], vec![]));
        assert_eq!(dir.lookup(Anon, "A"), Some(2));
        assert!(dir.slots[0].is_empty());
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
        assert_eq!(dir.slots[1][0], Key::of(User, "U"));
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
    fn identifier_lists_carry_no_slack_when_small() {
        let mut dir = Directory::new();
        resolve(&mut dir, &[u("U"), a("A")]);
        assert_eq!(dir.list_capacity, 2);
        for i in 0..100 {
            resolve(&mut dir, &[u("U"), a(&format!("B{i}"))]);
        }
        assert_eq!(dir.identifiers(), 102);
        assert!(dir.list_capacity >= 102 && dir.list_capacity < 2 * 102 + EXACT_GROWTH_KEYS);
        assert!(dir.heap_bytes() > 102 * (size_of::<Entry>() + size_of::<Key>()));
        assert_eq!(Directory::new().heap_bytes(), 0);
        // A clone counts its own (exact) capacities.
        let clone = dir.clone();
        clone.validate().expect("valid clone");
        assert_eq!(clone.list_capacity, 102);
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

    /// A snapshot with a valid header and checksum around `body` (the part
    /// after the length field).
    fn sealed(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&((16 + body.len() + 4) as u64).to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

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
            prop_assert_eq!(back.encode(), bytes);
        }
    }
}
