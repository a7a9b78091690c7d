//! Placement: which shard holds a profile, and which Raft group is which.
//!
//! A profile lives on the shard chosen by a hash of its id, for its whole
//! life (a merge moves the absorbed profile's data to the survivor's
//! shard). Raft group 1 is the catalog; shard `s` is group `s + 2`.

use crate::shard::ProfileId;

/// The Raft group of the catalog (identity directory, schema, saved
/// segments, deduplication, rejection and merge records).
pub const CATALOG_GROUP: u64 = 1;

/// The Raft group of shard `shard`.
pub fn shard_group(shard: u32) -> u64 {
    shard as u64 + 2
}

/// The shard that holds `profile` among `shards` shards.
pub fn shard_of(profile: ProfileId, shards: u32) -> u32 {
    ((profile.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % shards.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_spread_over_every_shard() {
        let mut seen = [0u32; 16];
        for p in 1..=16_000 {
            seen[shard_of(p, 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
        assert_eq!(shard_group(0), 2);
    }
}
