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

/// The next step for a group this node (`me`) leads, whose configuration
/// and replicas' progress are `group`; `None` when it matches the table
/// (or a change is pending, or the members' table is empty).
pub fn plan(me: u64, group: &Membership, members: &Members) -> Option<Step> {
    if !group.leading || group.change_pending || !group.voters_outgoing.is_empty() {
        return None;
    }
    let in_group = |id: u64| group.voters.contains(&id) || group.learners.contains(&id);
    let active = |id: u64| members.get(&id).is_some_and(|m| m.state == MemberState::Active);
    let removed = |id: u64| members.get(&id).is_some_and(|m| m.state == MemberState::Removed);
    // Removals first: a node on its way out should not take part in the
    // quorum of the additions.
    if let Some(&gone) = group.voters.iter().chain(&group.learners).find(|&&id| removed(id)) {
        if gone == me {
            let to = group
                .progress
                .iter()
                .filter(|p| {
                    p.node != me && group.voters.contains(&p.node) && p.recent_active && !removed(p.node)
                })
                .max_by_key(|p| p.matched)
                .map(|p| p.node)?;
            return Some(Step::HandOver(to));
        }
        // Never the last voter.
        if group.voters.len() == 1 && group.voters[0] == gone {
            return None;
        }
        return Some(Step::Change(change(ConfChangeType::RemoveNode, gone)));
    }
    if let Some(learner) = group.learners.iter().copied().find(|&id| active(id)) {
        // Caught up: entries stream to it and it is close behind, or it
        // has everything (a quiet group: after its snapshot raft-rs probes
        // a learner until the next entry, which may be long in coming).
        let caught_up = group.progress.iter().any(|p| {
            p.node == learner
                && p.matched > 0
                && (p.matched >= group.commit || (p.replicating && p.matched + CAUGHT_UP_LAG >= group.commit))
        });
        return caught_up.then(|| Step::Change(change(ConfChangeType::AddNode, learner)));
    }
    if let Some(new) = members.values().find(|m| m.state == MemberState::Active && !in_group(m.id)) {
        if group.snapshot_index == 0 {
            return Some(Step::Compact);
        }
        return Some(Step::Change(change(ConfChangeType::AddLearnerNode, new.id)));
    }
    None
}

/// A ConfChangeV2 of one change (raft-rs applies it without a joint
/// configuration: one voter more or less keeps every quorum overlapping).
fn change(kind: ConfChangeType, node: u64) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.set_transition(ConfChangeTransition::Auto);
    cc.set_changes(vec![single].into());
    cc
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

    #[test]
    fn a_new_member_joins_as_a_learner_after_the_log_is_compacted() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let mut group = led(&[1, 2, 3], &[], vec![]);
        group.snapshot_index = 0;
        assert_eq!(plan(1, &group, &members), Some(Step::Compact));
        group.snapshot_index = 10;
        assert_eq!(plan(1, &group, &members), Some(Step::Change(change(ConfChangeType::AddLearnerNode, 4))));
    }

    #[test]
    fn a_learner_is_promoted_only_once_it_has_caught_up() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let behind = led(&[1, 2, 3], &[4], vec![progress(4, 10, false)]);
        assert_eq!(plan(1, &behind, &members), None, "waiting for its snapshot");
        let streaming_far_behind = led(&[1, 2, 3], &[4], vec![progress(4, 3_000, true)]);
        assert_eq!(plan(1, &streaming_far_behind, &members), None);
        let caught_up = led(&[1, 2, 3], &[4], vec![progress(4, 4_990, true)]);
        assert_eq!(plan(1, &caught_up, &members), Some(Step::Change(change(ConfChangeType::AddNode, 4))));
        // A quiet group: the learner has its snapshot, which is the whole
        // log, and raft-rs probes it until the next entry.
        let quiet = led(&[1, 2, 3], &[4], vec![progress(4, 5_000, false)]);
        assert_eq!(plan(1, &quiet, &members), Some(Step::Change(change(ConfChangeType::AddNode, 4))));
    }

    #[test]
    fn a_removed_member_leaves_and_a_removed_leader_hands_over_first() {
        let members = table(&[(1, Active), (2, Removed), (3, Active)]);
        let group = led(&[1, 2, 3], &[], vec![progress(2, 5_000, true), progress(3, 4_000, true)]);
        assert_eq!(plan(1, &group, &members), Some(Step::Change(change(ConfChangeType::RemoveNode, 2))));
        let members = table(&[(1, Removed), (2, Active), (3, Active)]);
        let group = led(&[1, 2, 3], &[], vec![progress(2, 4_000, true), progress(3, 4_900, true)]);
        assert_eq!(plan(1, &group, &members), Some(Step::HandOver(3)), "to the voter furthest along");
    }

    #[test]
    fn nothing_moves_while_a_change_is_pending_or_when_not_leading_or_in_sync() {
        let members = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let mut group = led(&[1, 2, 3], &[], vec![]);
        group.change_pending = true;
        assert_eq!(plan(1, &group, &members), None);
        group.change_pending = false;
        group.leading = false;
        assert_eq!(plan(1, &group, &members), None);
        let in_sync = led(&[1, 2, 3, 4], &[], vec![]);
        assert_eq!(plan(1, &in_sync, &members), None);
        // Founders the table does not list stay.
        let unlisted = led(&[1, 2, 3, 9], &[], vec![]);
        assert_eq!(plan(1, &unlisted, &table(&[(1, Active), (2, Active), (3, Active)])), None);
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
