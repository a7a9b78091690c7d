//! Membership: which nodes make up the cluster, and how every group's
//! Raft configuration is brought to it.
//!
//! The member table lives in the catalog (replicated, in its snapshot):
//! each node's id, its Raft and client addresses and whether it is
//! `active` or `removed`. An operator changes it through the catalog's
//! log (`cohort serve --join`, `cohort cluster add-node`, `remove-node`);
//! nothing else changes a group's configuration. On every node a
//! reconciler looks, every few hundred milliseconds, at each group this
//! node leads and takes one step toward the table ([`plan`]):
//!
//! 1. an active member that is not in the group joins it as a learner,
//!    once the leader's log no longer starts at index 1 (so the learner is
//!    sent a snapshot with the configuration, never the log from its
//!    start);
//! 2. a learner that has caught up (it has the whole committed log, or
//!    entries stream to it and it is within [`CAUGHT_UP_LAG`] entries of
//!    the commit index) is promoted to voter with a ConfChangeV2;
//! 3. a removed member leaves the group: first its leadership, if it
//!    leads, goes to another voter; then a ConfChangeV2 removes it.
//!
//! One change per group at a time (raft-rs takes one), so a group never
//! loses its quorum to a change: a learner does not vote, and a voter is
//! added only once it has the log. Members the table does not list (the
//! founders of a cluster that has not recorded them yet) are never
//! removed. Since every step is decided afresh from the table and the
//! group as they are, a leader change or a restart in the middle of a
//! change only delays it.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

use crate::replication::driver::Membership;

/// How far behind the commit index a learner may be and still be
/// promoted: entries in flight under load.
pub const CAUGHT_UP_LAG: u64 = 1_000;

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Raft id.
    pub id: u64,
    /// Where its Raft service (and the Forward service) listens.
    pub raft_addr: String,
    /// Where its client gRPC door listens.
    pub grpc_addr: String,
    /// Whether it is in the cluster.
    pub state: MemberState,
}

/// Whether a member is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// It is, or is being added to every group.
    Active,
    /// It was removed (or is being removed from every group); its id is
    /// not used again.
    Removed,
}

impl MemberState {
    /// `active` or `removed`.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Removed => "removed",
        }
    }
}

/// The member table, by id.
pub type Members = BTreeMap<u64, Member>;

/// Checks a change to the member table against it; `Err` says why it is
/// refused.
pub fn check_change(members: &Members, change: &Member) -> Result<(), String> {
    if change.id == 0 {
        return Err("node id 0 is not a node id (raft-rs reserves it)".into());
    }
    if change.state == MemberState::Active {
        if change.raft_addr.is_empty() || change.grpc_addr.is_empty() {
            return Err(format!("node {} needs a Raft address and a gRPC address", change.id));
        }
        if members.get(&change.id).is_some_and(|m| m.state == MemberState::Removed) {
            return Err(format!(
                "node {} was removed from the cluster; a node that comes back takes a new id and an empty data directory",
                change.id
            ));
        }
        if let Some(other) = members
            .values()
            .find(|m| m.id != change.id && m.state == MemberState::Active && m.raft_addr == change.raft_addr)
        {
            return Err(format!("node {} already has the Raft address {}", other.id, other.raft_addr));
        }
    } else {
        let Some(known) = members.get(&change.id) else {
            return Err(format!("node {} is not a member of the cluster", change.id));
        };
        if known.state == MemberState::Active
            && !members.values().any(|m| m.id != change.id && m.state == MemberState::Active)
        {
            return Err(format!("node {} is the last member; a cluster keeps at least one", change.id));
        }
    }
    Ok(())
}

/// One step toward the member table for a group this node leads.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Compact the log first, so that the next learner gets a snapshot.
    Compact,
    /// Propose this configuration change.
    Change(ConfChangeV2),
    /// Hand the leadership to this voter first (this node is removed).
    HandOver(u64),
}

/// The replicas a group should have: its wanted voters (from the
/// [`crate::cluster::placement::Placement`]) and the nodes that follow it
/// as learners (the catalog's other active members; none for a shard).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Nodes that should vote.
    pub voters: Vec<u64>,
    /// Nodes that should follow the log without voting.
    pub learners: Vec<u64>,
}

impl Wanted {
    /// What the group wants: the placement's voters for it (every active
    /// member when the placement has no entry for the group, as a cluster
    /// formed before placement had it), and, when `learners_follow` (the
    /// catalog), every other active member as a learner.
    pub fn of(placed: Option<&[u64]>, members: &Members, learners_follow: bool) -> Wanted {
        let active: Vec<u64> =
            members.values().filter(|m| m.state == MemberState::Active).map(|m| m.id).collect();
        let voters: Vec<u64> = match placed {
            Some(placed) => placed.iter().copied().filter(|id| active.contains(id)).collect(),
            None => active.clone(),
        };
        let learners = if learners_follow {
            active.iter().copied().filter(|id| !voters.contains(id)).collect()
        } else {
            Vec::new()
        };
        Wanted { voters, learners }
    }
}

/// The next step for a group this node (`me`) leads, whose configuration
/// and replicas' progress are `group`, toward `wanted`; `None` when it is
/// there (or a change is pending, or the member table is empty).
///
/// In order:
/// 1. a removed member that leads hands its leadership over;
/// 2. a wanted voter that is a learner and has caught up is promoted; if
///    a voter is displaced (not wanted, and not this node), the same
///    ConfChangeV2 removes or demotes it, a joint configuration that
///    raft-rs leaves by itself (a move: the group never has fewer voters
///    than it wants);
/// 3. a wanted node not in the group joins as a learner (after a
///    compaction, so that it is sent a snapshot);
/// 4. once every wanted voter votes, a displaced voter leaves: this node
///    hands its leadership over first; a catalog voter that should follow
///    is demoted to learner; any other is removed;
/// 5. a learner nobody wants is removed.
///
/// Members the table does not list (founders not recorded yet) are never
/// removed, and the last voter never leaves.
pub fn plan(me: u64, group: &Membership, members: &Members, wanted: &Wanted) -> Option<Step> {
    if !group.leading || group.change_pending || !group.voters_outgoing.is_empty() || members.is_empty() {
        return None;
    }
    let in_group = |id: u64| group.voters.contains(&id) || group.learners.contains(&id);
    let listed = |id: u64| members.contains_key(&id);
    let removed = |id: u64| members.get(&id).is_some_and(|m| m.state == MemberState::Removed);
    let displaced = |id: u64| listed(id) && !wanted.voters.contains(&id);
    let hand_over = || {
        group
            .progress
            .iter()
            .filter(|p| p.node != me && group.voters.contains(&p.node) && p.recent_active && !removed(p.node))
            .max_by_key(|p| (wanted.voters.contains(&p.node), p.matched))
            .map(|p| Step::HandOver(p.node))
    };
    // 1. A node on its way out should not lead the changes that follow.
    if removed(me) && group.voters.contains(&me) {
        return hand_over();
    }
    // 2. A caught-up learner that should vote.
    if let Some(learner) = group.learners.iter().copied().find(|id| wanted.voters.contains(id)) {
        // Caught up: entries stream to it and it is close behind, or it
        // has everything (a quiet group: after its snapshot raft-rs probes
        // a learner until the next entry, which may be long in coming).
        let caught_up = group.progress.iter().any(|p| {
            p.node == learner
                && p.matched > 0
                && (p.matched >= group.commit || (p.replicating && p.matched + CAUGHT_UP_LAG >= group.commit))
        });
        if !caught_up {
            return None;
        }
        let out = group.voters.iter().copied().find(|&id| id != me && displaced(id));
        let mut changes = vec![single(ConfChangeType::AddNode, learner)];
        if let Some(out) = out {
            changes.push(leave(out, wanted));
        }
        return Some(Step::Change(conf_change(changes)));
    }
    // 3. A wanted node that is not in the group yet.
    if let Some(new) = wanted.voters.iter().chain(&wanted.learners).copied().find(|&id| !in_group(id)) {
        if group.snapshot_index == 0 {
            return Some(Step::Compact);
        }
        return Some(Step::Change(change(ConfChangeType::AddLearnerNode, new)));
    }
    // 4. Every wanted voter votes: the displaced voters go.
    if let Some(out) = group.voters.iter().copied().find(|&id| displaced(id)) {
        if out == me {
            return hand_over();
        }
        if group.voters.len() == 1 {
            return None;
        }
        return Some(Step::Change(conf_change(vec![leave(out, wanted)])));
    }
    // 5. Learners nobody wants.
    if let Some(out) = group.learners.iter().copied().find(|&id| listed(id) && !wanted.learners.contains(&id))
    {
        return Some(Step::Change(change(ConfChangeType::RemoveNode, out)));
    }
    None
}

/// How a displaced voter leaves: demoted to learner when it should follow
/// the log, else removed.
fn leave(node: u64, wanted: &Wanted) -> ConfChangeSingle {
    if wanted.learners.contains(&node) {
        single(ConfChangeType::AddLearnerNode, node)
    } else {
        single(ConfChangeType::RemoveNode, node)
    }
}

fn single(kind: ConfChangeType, node: u64) -> ConfChangeSingle {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    single
}

/// A ConfChangeV2 of these changes: one is applied at once; several go
/// through a joint configuration that raft-rs leaves by itself once it is
/// committed (`Auto`).
fn conf_change(changes: Vec<ConfChangeSingle>) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.set_transition(ConfChangeTransition::Auto);
    cc.set_changes(changes.into());
    cc
}

/// A ConfChangeV2 of one change (raft-rs applies it without a joint
/// configuration: one voter more or less keeps every quorum overlapping).
fn change(kind: ConfChangeType, node: u64) -> ConfChangeV2 {
    conf_change(vec![single(kind, node)])
}

/// What a change does, for logs: `add learner 4`, `promote 4`, `remove 2`.
pub fn describe(cc: &ConfChangeV2) -> String {
    cc.get_changes()
        .iter()
        .map(|c| {
            let what = match c.get_change_type() {
                ConfChangeType::AddNode => "promote",
                ConfChangeType::AddLearnerNode => "add learner",
                ConfChangeType::RemoveNode => "remove",
            };
            format!("{what} {}", c.node_id)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::driver::ReplicaProgress;

    fn member(id: u64, state: MemberState) -> Member {
        Member { id, raft_addr: format!("10.0.0.{id}:7170"), grpc_addr: format!("10.0.0.{id}:7070"), state }
    }

    fn table(entries: &[(u64, MemberState)]) -> Members {
        entries.iter().map(|&(id, s)| (id, member(id, s))).collect()
    }

    fn progress(node: u64, matched: u64, replicating: bool) -> ReplicaProgress {
        ReplicaProgress { node, matched, replicating, recent_active: true }
    }

    fn led(voters: &[u64], learners: &[u64], progress: Vec<ReplicaProgress>) -> Membership {
        Membership {
            leading: true,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            commit: 5_000,
            snapshot_index: 100,
            progress,
            ..Membership::default()
        }
    }

    use MemberState::{Active, Removed};

    /// Every active member a voter (a group the placement has no entry
    /// for).
    fn every(members: &Members) -> Wanted {
        Wanted::of(None, members, false)
    }

    fn joint(changes: &[(ConfChangeType, u64)]) -> Step {
        Step::Change(conf_change(changes.iter().map(|&(k, n)| single(k, n)).collect()))
    }

    #[test]
    fn a_move_adds_a_learner_then_swaps_it_in_for_the_displaced_voter_in_one_joint_change() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let wanted = Wanted::of(Some(&[1, 2, 4]), &members, false);
        let group = led(&[1, 2, 3], &[], vec![]);
        assert_eq!(
            plan(1, &group, &members, &wanted),
            Some(Step::Change(change(ConfChangeType::AddLearnerNode, 4)))
        );
        let catching_up = led(&[1, 2, 3], &[4], vec![progress(4, 10, false)]);
        assert_eq!(plan(1, &catching_up, &members, &wanted), None, "3 keeps voting meanwhile");
        let caught_up = led(&[1, 2, 3], &[4], vec![progress(4, 5_000, true)]);
        assert_eq!(
            plan(1, &caught_up, &members, &wanted),
            Some(joint(&[(ConfChangeType::AddNode, 4), (ConfChangeType::RemoveNode, 3)]))
        );
        let mut joint_config = led(&[1, 2, 4], &[], vec![]);
        joint_config.voters_outgoing = vec![1, 2, 3];
        assert_eq!(plan(1, &joint_config, &members, &wanted), None, "raft-rs leaves the joint configuration");
        assert_eq!(plan(1, &led(&[1, 2, 4], &[], vec![]), &members, &wanted), None, "done");
    }

    #[test]
    fn a_displaced_leader_hands_over_and_a_promotion_never_removes_the_leader() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let wanted = Wanted::of(Some(&[2, 3, 4]), &members, false);
        let caught_up = led(&[1, 2, 3], &[4], vec![progress(4, 5_000, true)]);
        assert_eq!(
            plan(1, &caught_up, &members, &wanted),
            Some(Step::Change(change(ConfChangeType::AddNode, 4))),
            "promoted alone: the leader does not remove itself"
        );
        let group = led(
            &[1, 2, 3, 4],
            &[],
            vec![progress(2, 4_000, true), progress(3, 4_900, true), progress(4, 4_950, true)],
        );
        assert_eq!(plan(1, &group, &members, &wanted), Some(Step::HandOver(4)));
        let group = led(&[2, 3, 4, 1], &[], vec![]);
        assert_eq!(
            plan(2, &group, &members, &wanted),
            Some(Step::Change(change(ConfChangeType::RemoveNode, 1))),
            "the new leader removes it"
        );
    }

    #[test]
    fn the_catalogs_other_members_follow_as_learners_and_a_displaced_voter_is_demoted() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let wanted = Wanted::of(Some(&[1, 2, 3]), &members, true);
        assert_eq!(wanted.learners, vec![4]);
        let group = led(&[1, 2, 3], &[], vec![]);
        assert_eq!(
            plan(1, &group, &members, &wanted),
            Some(Step::Change(change(ConfChangeType::AddLearnerNode, 4)))
        );
        assert_eq!(plan(1, &led(&[1, 2, 3], &[4], vec![progress(4, 5_000, true)]), &members, &wanted), None);
        let moved = Wanted::of(Some(&[1, 2, 4]), &members, true);
        assert_eq!(
            plan(1, &led(&[1, 2, 3], &[4], vec![progress(4, 5_000, true)]), &members, &moved),
            Some(joint(&[(ConfChangeType::AddNode, 4), (ConfChangeType::AddLearnerNode, 3)]))
        );
        // A shard group: a learner nobody wants is removed.
        let shard = Wanted::of(Some(&[1, 2, 3]), &members, false);
        assert_eq!(
            plan(1, &led(&[1, 2, 3], &[4], vec![]), &members, &shard),
            Some(Step::Change(change(ConfChangeType::RemoveNode, 4)))
        );
    }

    #[test]
    fn a_new_member_joins_as_a_learner_after_the_log_is_compacted() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let mut group = led(&[1, 2, 3], &[], vec![]);
        group.snapshot_index = 0;
        assert_eq!(plan(1, &group, &members, &every(&members)), Some(Step::Compact));
        group.snapshot_index = 10;
        assert_eq!(
            plan(1, &group, &members, &every(&members)),
            Some(Step::Change(change(ConfChangeType::AddLearnerNode, 4)))
        );
    }

    #[test]
    fn a_learner_is_promoted_only_once_it_has_caught_up() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let behind = led(&[1, 2, 3], &[4], vec![progress(4, 10, false)]);
        assert_eq!(plan(1, &behind, &members, &every(&members)), None, "waiting for its snapshot");
        let streaming_far_behind = led(&[1, 2, 3], &[4], vec![progress(4, 3_000, true)]);
        assert_eq!(plan(1, &streaming_far_behind, &members, &every(&members)), None);
        let caught_up = led(&[1, 2, 3], &[4], vec![progress(4, 4_990, true)]);
        assert_eq!(
            plan(1, &caught_up, &members, &every(&members)),
            Some(Step::Change(change(ConfChangeType::AddNode, 4)))
        );
        // A quiet group: the learner has its snapshot, which is the whole
        // log, and raft-rs probes it until the next entry.
        let quiet = led(&[1, 2, 3], &[4], vec![progress(4, 5_000, false)]);
        assert_eq!(
            plan(1, &quiet, &members, &every(&members)),
            Some(Step::Change(change(ConfChangeType::AddNode, 4)))
        );
    }

    #[test]
    fn a_removed_member_leaves_and_a_removed_leader_hands_over_first() {
        let members = table(&[(1, Active), (2, Removed), (3, Active)]);
        let group = led(&[1, 2, 3], &[], vec![progress(2, 5_000, true), progress(3, 4_000, true)]);
        assert_eq!(
            plan(1, &group, &members, &every(&members)),
            Some(Step::Change(change(ConfChangeType::RemoveNode, 2)))
        );
        let members = table(&[(1, Removed), (2, Active), (3, Active)]);
        let group = led(&[1, 2, 3], &[], vec![progress(2, 4_000, true), progress(3, 4_900, true)]);
        assert_eq!(
            plan(1, &group, &members, &every(&members)),
            Some(Step::HandOver(3)),
            "to the voter furthest along"
        );
    }

    #[test]
    fn nothing_moves_while_a_change_is_pending_or_when_not_leading_or_in_sync() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let mut group = led(&[1, 2, 3], &[], vec![]);
        group.change_pending = true;
        assert_eq!(plan(1, &group, &members, &every(&members)), None);
        group.change_pending = false;
        group.leading = false;
        assert_eq!(plan(1, &group, &members, &every(&members)), None);
        let in_sync = led(&[1, 2, 3, 4], &[], vec![]);
        assert_eq!(plan(1, &in_sync, &members, &every(&members)), None);
        // Founders the table does not list stay.
        let three = table(&[(1, Active), (2, Active), (3, Active)]);
        let unlisted = led(&[1, 2, 3, 9], &[], vec![]);
        assert_eq!(plan(1, &unlisted, &three, &every(&three)), None);
    }

    #[test]
    fn the_table_refuses_what_would_break_the_cluster() {
        let members = table(&[(1, Active), (2, Removed)]);
        let err = |m: Member| check_change(&members, &m).unwrap_err();
        assert!(err(member(2, Active)).contains("was removed"));
        assert!(err(member(1, Removed)).contains("last member"));
        assert!(err(member(7, Removed)).contains("not a member"));
        let mut clash = member(5, Active);
        clash.raft_addr = members[&1].raft_addr.clone();
        assert!(err(clash).contains("already has the Raft address"));
        assert!(err(member(0, Active)).contains("id 0"));
        assert!(check_change(&members, &member(5, Active)).is_ok());
        assert!(check_change(&table(&[(1, Active), (2, Active)]), &member(2, Removed)).is_ok());
    }
}
