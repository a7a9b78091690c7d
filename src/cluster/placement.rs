//! Placement: which shard holds a profile, and which Raft group is which.
//!
//! A profile lives on the shard chosen by a hash of its id, for its whole
//! life (a merge moves the absorbed profile's data to the survivor's
//! shard). Raft group 1 is the catalog; shard `s` is group `s + 2`.
//! Which nodes hold each group's replicas is the [`Placement`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// The replication factor of a cluster whose founders set none: three
/// voters per group, or every node when there are fewer.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// Where every group's replicas should be: the wanted voters of the
/// catalog and of each shard group, kept in the catalog (replicated, in
/// its snapshot) and changed only by its log, so that every node reads
/// the same placement at the same index. Each group's leader brings the
/// group's configuration to it ([`crate::cluster::membership::plan`]).
///
/// The catalog's other active members follow its log as learners (they
/// need the member table, the schema and the saved segments to compile a
/// query); a shard group has no replica outside its wanted voters.
///
/// The rules, all deterministic (ties go to the lower node id):
/// - a group short of the factor (a young cluster, or a node removed)
///   takes the active node with the fewest replicas that it lacks;
/// - a removed node is replaced in every group that had it;
/// - a new node takes no replica until a group is short or an operator
///   asks for a rebalance or a move;
/// - a rebalance moves one replica at a time from the node with the most
///   to the node with the fewest, until no two nodes differ by more than
///   one (the catalog counts as a group like the shards);
/// - with zone labels (`--zone`), a group's replicas go to as many zones
///   as there are: a group short of the factor takes a node of a zone it
///   lacks first; one with too many gives up a node of a zone it has
///   twice first; a rebalance first moves a replica off a zone a group
///   has twice to a zone it lacks, and no load move lowers a group's
///   number of zones. A node without a label counts as a zone of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Voters per group; 0 until the cluster's first leader sets it
    /// (then [`DEFAULT_REPLICATION_FACTOR`] is used).
    pub replication_factor: u32,
    /// Wanted voters by group id, in the order they were placed.
    pub groups: BTreeMap<u64, Vec<u64>>,
    /// The zone label of each node that has one (`--zone`).
    pub zones: BTreeMap<u64, String>,
}

/// One replica moved by [`Placement::rebalance`] or asked for by an
/// operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    /// The group.
    pub group: u64,
    /// The node that gives its replica up.
    pub from: u64,
    /// The node that takes it.
    pub to: u64,
}

impl Placement {
    /// The replication factor in force.
    pub fn factor(&self) -> usize {
        match self.replication_factor {
            0 => DEFAULT_REPLICATION_FACTOR as usize,
            n => n as usize,
        }
    }

    /// The wanted voters of `group`; `None` when the placement has no
    /// entry for it (a cluster formed before placement was recorded: then
    /// every active member is wanted, as it was).
    pub fn wanted(&self, group: u64) -> Option<&[u64]> {
        self.groups.get(&group).map(Vec::as_slice)
    }

    /// How many zones `voters` span (a node without a label is a zone of
    /// its own).
    pub fn zones_of(&self, voters: &[u64]) -> usize {
        let mut seen: Vec<Result<&str, u64>> =
            voters.iter().map(|id| self.zones.get(id).map(String::as_str).ok_or(*id)).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    /// Whether `id` is in a zone none of `voters` is in.
    fn new_zone(&self, voters: &[u64], id: u64) -> bool {
        match self.zones.get(&id) {
            Some(zone) => !voters.iter().any(|v| self.zones.get(v) == Some(zone)),
            None => true,
        }
    }

    /// Whether `id` shares its zone with another of `voters`.
    fn shares_zone(&self, voters: &[u64], id: u64) -> bool {
        self.zones
            .get(&id)
            .is_some_and(|zone| voters.iter().any(|&v| v != id && self.zones.get(&v) == Some(zone)))
    }

    /// Replicas wanted on each of `active` (0 for a node with none).
    pub fn load(&self, active: &[u64]) -> BTreeMap<u64, usize> {
        let mut load: BTreeMap<u64, usize> = active.iter().map(|&id| (id, 0)).collect();
        for voters in self.groups.values() {
            for id in voters {
                if let Some(n) = load.get_mut(id) {
                    *n += 1;
                }
            }
        }
        load
    }

    /// Brings every one of `groups` to the factor with `active` nodes:
    /// a group short of it takes the least loaded nodes it lacks, one with
    /// too many gives up its most loaded. Nodes not in `active` are
    /// dropped first.
    pub fn fill(&mut self, active: &[u64], groups: &[u64]) {
        let want = self.factor().min(active.len());
        for &group in groups {
            let mut voters = self.groups.get(&group).cloned().unwrap_or_default();
            voters.retain(|id| active.contains(id));
            self.groups.insert(group, voters);
        }
        for &group in groups {
            loop {
                let voters = &self.groups[&group];
                if voters.len() == want {
                    break;
                }
                let load = self.load(active);
                if voters.len() < want {
                    let to = least_loaded(&load, |id| !voters.contains(&id) && self.new_zone(voters, id))
                        .or_else(|| least_loaded(&load, |id| !voters.contains(&id)));
                    let Some(to) = to else { break };
                    if let Some(v) = self.groups.get_mut(&group) {
                        v.push(to);
                    }
                } else {
                    let from = most_loaded(&load, |id| voters.contains(&id) && self.shares_zone(voters, id))
                        .or_else(|| most_loaded(&load, |id| voters.contains(&id)));
                    let Some(from) = from else { break };
                    if let Some(v) = self.groups.get_mut(&group) {
                        v.retain(|&id| id != from);
                    }
                }
            }
        }
    }

    /// Moves `group`'s replica from `from` to `to`, in place (so that the
    /// group keeps its order); `Err` says why it cannot.
    pub fn move_replica(&mut self, mv: ReplicaMove, active: &[u64]) -> Result<(), String> {
        let ReplicaMove { group, from, to } = mv;
        let voters = self.groups.get_mut(&group).ok_or_else(|| format!("group {group} is not placed"))?;
        if !active.contains(&to) {
            return Err(format!("node {to} is not an active member of the cluster"));
        }
        if voters.contains(&to) {
            return Err(format!("group {group} already has a replica on node {to}"));
        }
        let at = voters
            .iter()
            .position(|&id| id == from)
            .ok_or_else(|| format!("group {group} has no replica on node {from} (it has {voters:?})"))?;
        voters[at] = to;
        Ok(())
    }

    /// Fills every group, spreads each over the zones it can span, then
    /// moves replicas from the most loaded active node to the least loaded
    /// (never lowering a group's zones) until no two differ by more than
    /// one, or no move is left that would narrow the gap; returns the
    /// moves, in order.
    pub fn rebalance(&mut self, active: &[u64], groups: &[u64]) -> Vec<ReplicaMove> {
        self.fill(active, groups);
        let mut moves = Vec::new();
        // Zones first: a replica of a zone the group has twice goes to the
        // least loaded node of a zone it lacks.
        for &group in groups {
            loop {
                let voters = self.groups[&group].clone();
                let load = self.load(active);
                let Some(from) =
                    most_loaded(&load, |id| voters.contains(&id) && self.shares_zone(&voters, id))
                else {
                    break;
                };
                let Some(to) = least_loaded(&load, |id| !voters.contains(&id) && self.new_zone(&voters, id))
                else {
                    break;
                };
                let mv = ReplicaMove { group, from, to };
                if self.move_replica(mv, active).is_err() {
                    break;
                }
                moves.push(mv);
            }
        }
        // Then the load: the fullest node that can give a replica to the
        // emptiest node that can take it.
        loop {
            let load = self.load(active);
            let mut by_load: Vec<(usize, u64)> = load.iter().map(|(&id, &n)| (n, id)).collect();
            by_load.sort_unstable();
            let next = by_load.iter().rev().find_map(|&(high, from)| {
                by_load.iter().take_while(|&&(low, _)| low + 1 < high).find_map(|&(_, to)| {
                    groups
                        .iter()
                        .find(|g| {
                            let voters = &self.groups[*g];
                            if !voters.contains(&from) || voters.contains(&to) {
                                return false;
                            }
                            let mut after = voters.clone();
                            after.retain(|&id| id != from);
                            after.push(to);
                            self.zones_of(&after) >= self.zones_of(voters)
                        })
                        .map(|&group| ReplicaMove { group, from, to })
                })
            });
            let Some(mv) = next else { break };
            if self.move_replica(mv, active).is_err() {
                break;
            }
            moves.push(mv);
        }
        moves
    }
}

impl Placement {
    /// The replicas that moved from this placement to `after`: for each
    /// group, the nodes it lost paired with the nodes it gained.
    pub fn moves_to(&self, after: &Placement) -> Vec<ReplicaMove> {
        let mut moves = Vec::new();
        for (&group, now) in &after.groups {
            let before = self.groups.get(&group).cloned().unwrap_or_default();
            let lost = before.iter().filter(|id| !now.contains(id));
            let gained = now.iter().filter(|id| !before.contains(id));
            for (&from, &to) in lost.zip(gained) {
                moves.push(ReplicaMove { group, from, to });
            }
        }
        moves
    }
}

/// The node with the fewest replicas among those `eligible` takes (the
/// lower id on a tie).
fn least_loaded(load: &BTreeMap<u64, usize>, eligible: impl Fn(u64) -> bool) -> Option<u64> {
    load.iter().filter(|(&id, _)| eligible(id)).min_by_key(|(&id, &n)| (n, id)).map(|(&id, _)| id)
}

/// The node with the most replicas among those `eligible` takes (the
/// higher id on a tie).
fn most_loaded(load: &BTreeMap<u64, usize>, eligible: impl Fn(u64) -> bool) -> Option<u64> {
    load.iter().filter(|(&id, _)| eligible(id)).max_by_key(|(&id, &n)| (n, id)).map(|(&id, _)| id)
}

/// Every group of a cluster of `shards` shards: the catalog, then the
/// shards in order.
pub fn all_groups(shards: u32) -> Vec<u64> {
    std::iter::once(CATALOG_GROUP).chain((0..shards).map(shard_group)).collect()
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

    fn placed(groups: &[u64], active: &[u64], factor: u32) -> Placement {
        let mut p = Placement { replication_factor: factor, ..Placement::default() };
        p.fill(active, groups);
        p
    }

    #[test]
    fn a_young_cluster_places_every_group_on_the_factor_and_a_new_node_takes_nothing() {
        let groups = all_groups(8);
        let mut p = placed(&groups, &[1], 0);
        assert!(p.groups.values().all(|v| v == &[1]), "one node: every group on it");
        p.fill(&[1, 2], &groups);
        p.fill(&[1, 2, 3], &groups);
        assert!(p.groups.values().all(|v| v.len() == 3));
        let before = p.clone();
        p.fill(&[1, 2, 3, 4], &groups);
        assert_eq!(p, before, "a fourth node waits for a rebalance or a move");
        assert_eq!(p.load(&[1, 2, 3, 4])[&4], 0);
    }

    #[test]
    fn a_rebalance_evens_the_load_with_the_fewest_moves_and_keeps_the_factor() {
        let groups = all_groups(8);
        let mut p = placed(&groups, &[1, 2, 3], 3);
        let active = [1, 2, 3, 4];
        let moves = p.rebalance(&active, &groups);
        let load = p.load(&active);
        // 9 groups × 3 replicas over 4 nodes: 7, 7, 7, 6 (each move takes
        // one from the fullest to the emptiest).
        assert_eq!(load.values().sum::<usize>(), 27);
        assert!(load.values().all(|&n| n == 6 || n == 7), "{load:?}");
        assert_eq!(moves.len(), load[&4], "every move went to the new node: {moves:?}");
        assert!(moves.iter().all(|m| m.to == 4));
        assert!(p.groups.values().all(|v| v.len() == 3 && !has_duplicates(v)));
        assert_eq!(p.rebalance(&active, &groups), vec![], "a balanced placement stays");
    }

    #[test]
    fn a_removed_node_is_replaced_by_the_least_loaded_and_a_shrunk_cluster_keeps_what_it_can() {
        let groups = all_groups(8);
        let mut p = placed(&groups, &[1, 2, 3], 3);
        p.rebalance(&[1, 2, 3, 4], &groups);
        p.fill(&[1, 2, 4], &groups);
        assert!(p.groups.values().all(|v| v.len() == 3 && !v.contains(&3)), "{p:?}");
        p.fill(&[1, 4], &groups);
        assert!(p.groups.values().all(|v| v.len() == 2 && !v.contains(&2)), "{p:?}");
    }

    #[test]
    fn a_move_is_checked_and_keeps_the_groups_order() {
        let groups = all_groups(2);
        let mut p = placed(&groups, &[1, 2, 3, 4], 3);
        let g = shard_group(1);
        let had = p.groups[&g].clone();
        let absent = *[1, 2, 3, 4].iter().find(|id| !had.contains(id)).unwrap();
        let active = [1, 2, 3, 4];
        let err = |mv| p.clone().move_replica(mv, &active).unwrap_err();
        assert!(err(ReplicaMove { group: 99, from: had[0], to: absent }).contains("not placed"));
        assert!(err(ReplicaMove { group: g, from: absent, to: had[0] }).contains("already has a replica"));
        assert!(err(ReplicaMove { group: g, from: had[0], to: 7 }).contains("not an active member"));
        let other = *[1, 2, 3, 4].iter().find(|id| !had.contains(id) && **id != absent).unwrap_or(&9);
        if other != 9 {
            assert!(err(ReplicaMove { group: g, from: other, to: absent }).contains("has no replica"));
        }
        p.move_replica(ReplicaMove { group: g, from: had[1], to: absent }, &active).unwrap();
        assert_eq!(p.groups[&g], vec![had[0], absent, had[2]]);
    }

    #[test]
    fn a_lower_factor_shrinks_groups_from_their_most_loaded_nodes() {
        let groups = all_groups(4);
        let mut p = placed(&groups, &[1, 2, 3], 3);
        p.replication_factor = 1;
        p.fill(&[1, 2, 3], &groups);
        let load = p.load(&[1, 2, 3]);
        assert!(p.groups.values().all(|v| v.len() == 1));
        assert!(load.values().all(|&n| n <= 2), "{load:?}");
    }

    fn has_duplicates(v: &[u64]) -> bool {
        let mut s = v.to_vec();
        s.sort_unstable();
        s.windows(2).any(|w| w[0] == w[1])
    }

    #[test]
    fn replicas_spread_over_zones_first_and_a_rebalance_never_narrows_a_group() {
        let groups = all_groups(8);
        let mut p = Placement { replication_factor: 3, ..Placement::default() };
        // Nodes 1, 2 in zone a; 3, 4 in zone b; 5, 6 in zone c.
        for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
            p.zones.insert(id, zone.to_string());
        }
        p.fill(&[1, 2, 3, 4, 5, 6], &groups);
        assert!(p.groups.values().all(|v| p.zones_of(v) == 3), "every group in three zones: {p:?}");
        // A cluster placed before its labels: the rebalance moves replicas
        // off doubled zones, then evens the load without narrowing.
        let mut p = placed(&groups, &[1, 2, 3], 3);
        for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "c")] {
            p.zones.insert(id, zone.to_string());
        }
        let active = [1, 2, 3, 4];
        p.rebalance(&active, &groups);
        assert!(p.groups.values().all(|v| p.zones_of(v) == 3), "{p:?}");
        // With four nodes in three zones, node 4 (alone in zone c) is in
        // every group, and zone a's two nodes share a replica per group.
        let load = p.load(&active);
        assert_eq!(load[&4], groups.len());
        assert_eq!(load[&3], groups.len());
        assert_eq!(load[&1] + load[&2], groups.len());
        assert!(load[&1].abs_diff(load[&2]) <= 1, "{load:?}");
        // A node without a label is a zone of its own.
        assert_eq!(p.zones_of(&[1, 2, 9]), 2);
    }
}
