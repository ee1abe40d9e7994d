//! Ownership leases and failure detection.
//!
//! A member answers for its partitions only while it holds a valid **lease**, and the Raft
//! leader gives a member's partitions to another only after that lease has run out. So a
//! member that is frozen (SIGSTOP), cut off or slow stops answering before anyone else
//! starts, and two members never both answer for a partition.
//!
//! ```text
//!   member                                      Raft leader
//!   ──────                                      ───────────
//!   s = now; Lease{me} ───────────────────────▶ contact[me] = now (≥ s)
//!                                               grant = min(lease_ms, own lease left)
//!   lease_until = s + grant ◀────────────────── Lease{term, epoch, grant}
//!   serve while now < lease_until
//!   and epoch applied ≥ the leader's epoch
//!                                               no contact for failure_timeout_ms
//!                                               (> lease_ms) ⇒ MarkDown{member}
//! ```
//!
//! The lease is counted from when the member *sent* its request, which is before the
//! leader's contact time, so it always ends before `contact + lease_ms`, while the leader
//! waits `failure_timeout_ms > lease_ms` after the last contact. A pause anywhere only makes
//! the member's lease end sooner relative to the leader's view.
//!
//! The leader's own lease is confirmed by a quorum every heartbeat: the leader notes the time
//! `s`, sends Raft heartbeats, and once a majority of voters has acknowledged them holds its
//! lease until `s + lease_ms`. Those voters refuse to vote for another leader for an election
//! timeout (> `lease_ms`) after each heartbeat. A deposed leader (cut off on a minority side,
//! or frozen and woken) cannot get that confirmation, so it stops granting leases and its own
//! lapses within `lease_ms`. (Counting lease *requests* instead would not do: requests sent
//! to a leader that was frozen wait in its socket and look fresh when it wakes.)
//!
//! **Taking over.** A new leader is elected only with the vote of a member of the quorum that
//! confirmed the old leader's last lease, given an election timeout (> `lease_ms`) after that
//! member's last heartbeat: so when the new leader takes office, the old leader's lease and
//! every lease it granted (each bounded by its own) have run out. A member the new leader has
//! not heard from therefore holds no lease at all. The **old leader** is marked down at once,
//! as soon as the new leader's own lease is confirmed: it was out of touch with a majority for
//! an election timeout (a healthy leader cannot be voted out, as its voters refuse to vote
//! while they hear from it), so its partitions move right after the election, not a failure
//! timeout later. Any other member is marked down once it has had
//! [`takeover grace`](Leases::takeover_grace) (half the failure timeout, several lease
//! renewals) to learn of the new leader; a member that has asked it for a lease gets the full
//! `failure_timeout_ms` after its last request, as usual. Members ask the new leader for a
//! lease as soon as they learn of it, and the new leader acts on its office as soon as it is
//! elected, not at its next heartbeat.
//!
//! Leases are also how a member that comes back is kept from answering too early: a node
//! that restarts with its data directory serves nothing until its [`Command::Restarted`]
//! is applied (it may have lost writes it acknowledged from memory), and a member the
//! leader marked down asks to be taken back the same way when it wakes up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use parking_lot::Mutex;
use strata_proto::NodeId;
use strata_proto::ring::MemberState;
use strata_proto::wire::{ErrorCode, Request, Response, WireError};

use super::Cluster;
use crate::raft::Command;

/// How long a rejoining node waits to apply the epoch that took it back.
const REJOIN_WAIT: Duration = Duration::from_secs(10);

/// How often the leader checks Raft's voters against the members (besides every ring
/// change): a change that could not be made, or was left half done, is retried.
const BALANCE_EVERY: Duration = Duration::from_secs(1);

/// A term this node leads in.
#[derive(Clone, Copy, Debug)]
struct Term {
    term: u64,
    since: Instant,
    /// The leader of an earlier term that this node followed, if any.
    previous: Option<NodeId>,
}

/// Follower and leader sides of the lease protocol.
pub struct Leases {
    lease_ms: u64,
    failure_timeout: Duration,
    /// This node's lease: valid until then.
    until: Mutex<Option<Instant>>,
    /// Leader side: the lease a quorum last confirmed, and in which term.
    leader_until: Mutex<Option<(u64, Instant)>>,
    /// The leader's epoch at the last grant: the lease counts only once this node has
    /// applied it.
    granted_epoch: AtomicU64,
    /// False from a restart until this node's `Restarted` command is applied.
    rejoined: AtomicBool,
    /// Leader side: when each member last asked for a lease.
    contacts: Mutex<HashMap<NodeId, Instant>>,
    /// Leader side: the term this node leads in, since when, and the leader it followed
    /// before (marked down without grace unless it asks for a lease).
    leading: Mutex<Option<Term>>,
    /// Follower side: the last leader this node followed, and in which term.
    followed: Mutex<Option<(u64, NodeId)>>,
    /// Members marked down by this leader, to avoid proposing twice.
    proposed_down: Mutex<HashMap<NodeId, Instant>>,
    /// Times the lease ran out before it was renewed (for metrics), and whether it was
    /// valid at the last heartbeat.
    lapses: AtomicU64,
    was_valid: AtomicBool,
}

impl Leases {
    /// Leases for a node with these settings; `restarted` if it came back with Raft state
    /// (it answers nothing until it has been taken back).
    pub fn new(lease_ms: u64, failure_timeout_ms: u64, restarted: bool) -> Self {
        Self {
            lease_ms,
            failure_timeout: Duration::from_millis(failure_timeout_ms),
            until: Mutex::new(None),
            leader_until: Mutex::new(None),
            granted_epoch: AtomicU64::new(0),
            rejoined: AtomicBool::new(!restarted),
            contacts: Mutex::new(HashMap::new()),
            leading: Mutex::new(None),
            followed: Mutex::new(None),
            proposed_down: Mutex::new(HashMap::new()),
            lapses: AtomicU64::new(0),
            was_valid: AtomicBool::new(false),
        }
    }

    /// Times this node's lease ran out before it was renewed.
    pub fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::Relaxed)
    }

    /// Notes whether the lease is valid now, counting a lapse when it was valid before.
    fn note_validity(&self) {
        let valid = self
            .until
            .lock()
            .is_some_and(|until| Instant::now() < until);
        if self.was_valid.swap(valid, Ordering::Relaxed) && !valid {
            self.lapses.fetch_add(1, Ordering::Relaxed);
            tracing::info!("ownership lease lapsed");
        }
    }

    /// Whether this node may answer for its partitions at `applied_epoch`; else why not.
    pub fn check(&self, applied_epoch: u64) -> Result<(), &'static str> {
        if !self.rejoined.load(Ordering::Acquire) {
            return Err("this node restarted and is rejoining the cluster");
        }
        match *self.until.lock() {
            Some(until) if Instant::now() < until => {}
            _ => {
                return Err(
                    "this node's ownership lease has lapsed (no recent contact with the Raft leader)",
                );
            }
        }
        if applied_epoch < self.granted_epoch.load(Ordering::Acquire) {
            return Err("this node is behind the cluster's ring epoch");
        }
        Ok(())
    }

    /// How long a new leader waits to hear from a member before it marks it down: half the
    /// failure timeout.
    pub fn takeover_grace(&self) -> Duration {
        self.failure_timeout / 2
    }

    /// Which of `members` (live, not this leader) to mark down at `now`, for a leader in
    /// office `since` that last heard from them at `contacts`: a member this leader has
    /// granted a lease to after the failure timeout without a request; the `previous` leader
    /// at once if it has not asked for a lease; any other member it has never heard from
    /// after the [takeover grace](Leases::takeover_grace). (Any lease a member holds that did
    /// not come from this leader came from an earlier one and has run out: see the module
    /// documentation.)
    pub fn silent(
        &self,
        members: impl IntoIterator<Item = NodeId>,
        contacts: &HashMap<NodeId, Instant>,
        since: Instant,
        previous: Option<NodeId>,
        now: Instant,
    ) -> Vec<NodeId> {
        let in_office = now.saturating_duration_since(since);
        members
            .into_iter()
            .filter(|m| match contacts.get(m) {
                Some(&last) => {
                    now.saturating_duration_since(last.max(since)) > self.failure_timeout
                }
                None => previous == Some(*m) || in_office > self.takeover_grace(),
            })
            .collect()
    }

    /// Leader side: the term this node leads in, starting it (no contacts yet) if `term` is
    /// new. Both the leader's duties and lease grants go through here, so every lease granted
    /// in a term is in that term's contacts.
    fn lead_term(&self, term: u64, me: NodeId) -> Term {
        let mut leading = self.leading.lock();
        match *leading {
            Some(t) if t.term == term => t,
            _ => {
                self.contacts.lock().clear();
                self.proposed_down.lock().clear();
                let previous = match *self.followed.lock() {
                    Some((t, leader)) if t < term && leader != me => Some(leader),
                    _ => None,
                };
                let started = Term {
                    term,
                    since: Instant::now(),
                    previous,
                };
                *leading = Some(started);
                started
            }
        }
    }

    /// Follower side: notes the leader this node follows in `term`.
    fn follow(&self, term: u64, leader: Option<u64>) {
        *self.leading.lock() = None;
        if let Some(leader) = leader {
            *self.followed.lock() = Some((term, NodeId(leader)));
        }
    }

    /// The epoch the leader had at the last grant.
    pub fn granted_epoch(&self) -> u64 {
        self.granted_epoch.load(Ordering::Acquire)
    }

    fn extend(&self, from: Instant, granted_ms: u64, epoch: u64) {
        if granted_ms == 0 {
            return;
        }
        let until = from + Duration::from_millis(granted_ms.min(self.lease_ms));
        let mut held = self.until.lock();
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
        self.granted_epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    fn revoke(&self) {
        *self.until.lock() = None;
    }

    /// Leader side: until when this leader's own lease runs in `term`, if a quorum confirmed it.
    fn own_until(&self, term: u64) -> Option<Instant> {
        match *self.leader_until.lock() {
            Some((t, until)) if t == term => Some(until),
            _ => None,
        }
    }
}

impl Cluster {
    /// Whether this node may answer for the partitions it owns or replicates.
    pub fn serving(&self) -> Result<(), WireError> {
        if self.raft.is_none() {
            return Ok(());
        }
        self.leases
            .check(self.epoch())
            .map_err(|why| WireError::new(ErrorCode::NotReady, why))
    }

    /// Answers a member's lease request (only the Raft leader grants leases). A leader that
    /// has just taken office confirms its own lease first, so members that ask it at once
    /// are not turned away until its next heartbeat.
    pub async fn grant_lease(&self, node: NodeId) -> Result<Response, WireError> {
        let raft = self.raft_or_refuse()?;
        let metrics = raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(WireError::new(
                ErrorCode::NotReady,
                "leases are granted by the Raft leader only",
            ));
        }
        let term = metrics.current_term;
        self.leases.lead_term(term, self.id());
        if self.leases.own_until(term).is_none() {
            self.confirm_leadership(raft, term).await;
        }
        let now = Instant::now();
        self.leases.contacts.lock().insert(node, now);
        let state = self.state();
        let known = state
            .members
            .get(&node)
            .is_some_and(|m| m.state != MemberState::Down);
        let granted_ms = match self.leases.own_until(term) {
            Some(until) if known => until.saturating_duration_since(now).as_millis() as u64,
            _ => 0,
        };
        Ok(Response::Lease {
            term,
            epoch: state.epoch,
            granted_ms: granted_ms.min(self.leases.lease_ms),
        })
    }

    /// Leader side: confirms this leader's own lease in `term` through a quorum's
    /// acknowledgement of heartbeats sent from now, and takes it as this node's lease too;
    /// until when it runs, or `None` (the lease is revoked) if no quorum answered within a
    /// lease.
    async fn confirm_leadership(
        &self,
        raft: &openraft::Raft<crate::raft::TypeConfig>,
        term: u64,
    ) -> Option<Instant> {
        let sent = Instant::now();
        let lease = Duration::from_millis(self.leases.lease_ms);
        let confirmed = matches!(
            tokio::time::timeout(lease, raft.get_read_log_id()).await,
            Ok(Ok(_))
        );
        let own = confirmed.then_some(sent + lease);
        {
            let mut leader_until = self.leases.leader_until.lock();
            match (own, *leader_until) {
                // A confirmation that finished later but started earlier changes nothing.
                (Some(until), Some((t, held))) if t == term && held >= until => {}
                _ => *leader_until = own.map(|until| (term, until)),
            }
        }
        match own {
            Some(until) => {
                let state = self.state();
                let mut held = self.leases.until.lock();
                if held.is_none_or(|h| h < until) {
                    *held = Some(until);
                }
                self.leases
                    .granted_epoch
                    .fetch_max(state.epoch, Ordering::AcqRel);
            }
            None => self.leases.revoke(),
        }
        own
    }
}

/// Renews this node's lease every heartbeat and, on the leader, marks silent members down;
/// brings this node back into the cluster after a restart or a mark-down. Runs until the
/// node leaves. A change of Raft leader or term is acted on at once: the new leader takes up
/// its duties and the others ask it for a lease, without waiting for the next heartbeat.
pub async fn run(cluster: Arc<Cluster>) {
    let Some(raft) = cluster.raft().cloned() else {
        return;
    };
    let every = Duration::from_millis(cluster.config().heartbeat_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let left = cluster.left();
    let mut metrics = raft.metrics();
    // The (term, leader) acted on last: other metrics changes wait for the tick.
    let mut seen: Option<(u64, Option<u64>)> = None;
    let mut last_rejoin: Option<Instant> = None;
    let mut last_balance: Option<Instant> = None;
    // The rejoin runs beside the loop: waiting for its epoch must not stop the renewals, or
    // the leader, hearing nothing, marks the restarted node down again.
    let mut rejoining: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let ticked = tokio::select! {
            _ = left.cancelled() => return,
            _ = tick.tick() => true,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return; // Raft has shut down.
                }
                false
            }
        };
        let now = metrics.borrow_and_update().clone();
        let office = (now.current_term, now.current_leader);
        if !ticked && seen == Some(office) {
            continue;
        }
        seen = Some(office);
        cluster.leases.note_validity();
        let me = cluster.id();
        if now.state == ServerState::Leader && now.current_leader == Some(me.0) {
            lead(&cluster, &raft, now.current_term).await;
            if last_balance.is_none_or(|at| at.elapsed() >= BALANCE_EVERY) {
                last_balance = Some(Instant::now());
                let cluster = Arc::clone(&cluster);
                tokio::spawn(async move { cluster.balance_voters().await });
            }
        } else {
            cluster.leases.follow(now.current_term, now.current_leader);
            // Renewals overlap: one slow answer does not hold up the next request.
            let (cluster, leader) = (Arc::clone(&cluster), now.current_leader);
            tokio::spawn(async move { renew(&cluster, leader).await });
        }
        if rejoining.as_ref().is_none_or(|r| r.is_finished())
            && let Some(down) = needs_rejoin(&cluster, &mut last_rejoin)
        {
            let cluster = Arc::clone(&cluster);
            rejoining = Some(tokio::spawn(async move { rejoin(&cluster, down).await }));
        }
    }
}

/// Asks the leader for a lease.
async fn renew(cluster: &Cluster, leader: Option<u64>) {
    let Some(addr) = leader.and_then(|l| cluster.member_addr(NodeId(l))) else {
        return;
    };
    let sent = Instant::now();
    let request = Request::Lease { node: cluster.id() };
    let answer = cluster
        .peers()
        // A grant that arrives later than a lease lasts is worthless.
        .call(
            &addr,
            cluster.epoch(),
            request,
            &[],
            Duration::from_millis(cluster.leases.lease_ms),
        )
        .await;
    if let Ok((
        Response::Lease {
            epoch, granted_ms, ..
        },
        _,
    )) = answer
    {
        cluster.leases.extend(sent, granted_ms, epoch);
        if epoch > cluster.epoch() {
            cluster.catch_up(epoch).await;
        }
    }
}

/// Leader duties: hold the leader's own lease and mark silent members down.
async fn lead(cluster: &Cluster, raft: &openraft::Raft<crate::raft::TypeConfig>, term: u64) {
    // A new term starts with no contacts, before this node can grant anything in it (grants
    // need the lease confirmed below): so every lease a member holds from this leader shows
    // in `contacts`.
    let office = cluster.leases.lead_term(term, cluster.id());
    let own = cluster.confirm_leadership(raft, term).await;
    let now = Instant::now();
    // Only a leader that a majority is in contact with judges the others.
    if own.is_none_or(|u| u <= now) {
        return;
    }
    let me = cluster.id();
    let state = cluster.state();
    // The previous leader is judged at once only while it is an active member: one that is
    // joining or leaving is busy with a hand-off, and gets the grace like any other.
    let previous = office.previous.filter(|p| {
        state
            .members
            .get(p)
            .is_some_and(|m| m.state == MemberState::Active)
    });
    let live = state
        .members
        .values()
        .filter(|m| m.id != me && m.state != MemberState::Down)
        .map(|m| m.id);
    let silent = cluster.leases.silent(
        live,
        &cluster.leases.contacts.lock(),
        office.since,
        previous,
        now,
    );
    for node in silent {
        {
            let mut proposed = cluster.leases.proposed_down.lock();
            if proposed
                .get(&node)
                .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(2))
            {
                continue;
            }
            proposed.insert(node, now);
        }
        if previous == Some(node) {
            tracing::warn!(member = %node, "the previous Raft leader has not asked this one for a lease: marking it down");
        } else {
            tracing::warn!(member = %node, "no lease request within the failure timeout: marking it down");
        }
        let at_ms = strata_proto::Timestamp::now().as_millis();
        if let Err(e) = cluster.propose(Command::MarkDown { node, at_ms }).await {
            tracing::warn!(member = %node, error = %e, "could not mark a member down");
        }
    }
}

/// After a restart, or once the leader has marked this node down (and at most once a
/// second): `Some(down)` when this node must ask to be taken back, see [`rejoin`]. It serves
/// nothing from here until it is back.
fn needs_rejoin(cluster: &Cluster, last: &mut Option<Instant>) -> Option<bool> {
    let state = cluster.state();
    let me = cluster.id();
    let member = state.members.get(&me)?;
    let restarted = !cluster.leases.rejoined.load(Ordering::Acquire);
    let down = member.state == MemberState::Down;
    if !restarted && !down {
        return None;
    }
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return None;
    }
    *last = Some(Instant::now());
    // Nothing is served from here on until the command is applied.
    cluster.leases.rejoined.store(false, Ordering::Release);
    Some(down)
}

/// Asks to be taken back: the node owns nothing until it has synced its partitions again.
async fn rejoin(cluster: &Cluster, down: bool) {
    let me = cluster.id();
    tracing::info!(down, "asking to be taken back into the cluster");
    match cluster.propose(Command::Restarted { node: me }).await {
        Ok(crate::raft::CommandResponse::Applied { epoch, .. }) => {
            cluster.wait_for_epoch(epoch, REJOIN_WAIT).await;
            let back = cluster
                .state()
                .members
                .get(&me)
                .is_some_and(|m| m.state != MemberState::Down);
            if back {
                cluster.leases.rejoined.store(true, Ordering::Release);
                tracing::info!(epoch, "taken back: syncing partitions before owning them");
            }
        }
        Ok(crate::raft::CommandResponse::Rejected { reason }) => {
            tracing::warn!(%reason, "could not rejoin");
        }
        Err(e) => tracing::debug!(error = %e, "could not rejoin yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_leader_marks_down_only_members_it_never_heard_from_after_the_grace() {
        // lease 750 ms, failure timeout 1000 ms: grace 500 ms.
        let leases = Leases::new(750, 1000, false);
        let since = Instant::now();
        let (a, b) = (NodeId(2), NodeId(3));
        let contacts = HashMap::from([(a, since + 100 * MS)]);
        // Within the grace nobody is judged.
        assert!(
            leases
                .silent([a, b], &contacts, since, None, since + 400 * MS)
                .is_empty()
        );
        // After it, the member that never asked is down; the one that asked is not.
        assert_eq!(
            leases.silent([a, b], &contacts, since, None, since + 600 * MS),
            [b]
        );
        // The one that asked gets a full failure timeout after its last request.
        assert_eq!(
            leases.silent([a], &contacts, since, None, since + 1050 * MS),
            Vec::<NodeId>::new()
        );
        assert_eq!(
            leases.silent([a], &contacts, since, None, since + 1150 * MS),
            [a]
        );
    }

    #[test]
    fn the_previous_leader_is_marked_down_at_once_unless_it_asked_for_a_lease() {
        let leases = Leases::new(750, 1000, false);
        let since = Instant::now();
        let (old, other) = (NodeId(1), NodeId(3));
        let none = HashMap::new();
        // Right after the election: the old leader is down, the other member has its grace.
        assert_eq!(
            leases.silent([old, other], &none, since, Some(old), since + MS),
            [old]
        );
        // An old leader that has asked this one for a lease is judged like any member.
        let asked = HashMap::from([(old, since + 10 * MS)]);
        assert!(
            leases
                .silent([old, other], &asked, since, Some(old), since + 20 * MS)
                .is_empty()
        );
        assert_eq!(
            leases.silent([old], &asked, since, Some(old), since + 1020 * MS),
            [old]
        );
    }

    #[test]
    fn a_new_term_forgets_contacts_and_remembers_the_leader_it_followed() {
        let leases = Leases::new(750, 1000, false);
        let me = NodeId(2);
        leases.follow(4, Some(1));
        let term = leases.lead_term(5, me);
        assert_eq!(term.previous, Some(NodeId(1)));
        leases.contacts.lock().insert(NodeId(3), Instant::now());
        // The same term keeps its contacts and start.
        let again = leases.lead_term(5, me);
        assert_eq!(again.since, term.since);
        assert_eq!(leases.contacts.lock().len(), 1);
        // A later term starts afresh, and this node is never its own previous leader.
        leases.follow(6, Some(2));
        let later = leases.lead_term(7, me);
        assert_eq!(later.previous, None);
        assert!(leases.contacts.lock().is_empty());
    }

    #[test]
    fn a_contact_from_before_the_term_counts_from_the_start_of_the_term() {
        let leases = Leases::new(750, 1000, false);
        let before = Instant::now();
        let since = before + 5000 * MS;
        let contacts = HashMap::from([(NodeId(2), before)]);
        assert!(
            leases
                .silent([NodeId(2)], &contacts, since, None, since + 900 * MS)
                .is_empty()
        );
        assert_eq!(
            leases.silent([NodeId(2)], &contacts, since, None, since + 1100 * MS),
            [NodeId(2)]
        );
    }
}
