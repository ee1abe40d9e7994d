//! Chaos tests for Strata: a real cluster of `strata node` processes under a seeded workload
//! and seeded faults — `kill -9`, SIGSTOP, rolling restarts — and a checker that reads the
//! recorded history and reports every read no correct cache could have answered (lost
//! writes, stale reads, resurrections), with how long keys stayed unavailable after each
//! fault. The `strata-chaos` binary runs one scenario or a profile of several; see
//! `docs/chaos.md` for the rules, the scenarios and how to replay a seed.
//!
//! # Layout
//! - [`cluster`]: [`cluster::Cluster`] — node processes on fixed free ports, started,
//!   killed, frozen, restarted; never outliving the run. Or the same cluster as containers.
//! - [`containers`]: a cluster from `docker-compose.yml` in a compose project of its own, and
//!   container faults (`docker kill`/`pause`, network partitions with `iptables`).
//! - [`workload`]: concurrent clients doing a seeded mix of set/get/delete, and the final
//!   verification reads.
//! - [`history`]: the operations and faults of a run ([`history::Op`],
//!   [`history::Fault`]) and their JSON-lines files.
//! - [`checker`]: pure functions over a history: the read rule, violation kinds,
//!   unavailability per fault.
//! - [`scenario`]: the scenarios, their seeded fault schedules ([`scenario::plan`]) and one
//!   run from start to verdict ([`scenario::run`]).
//! - [`rejoin`]: how long a restarted member takes to be active again with a given amount
//!   of data.
//! - [`summary`]: what a run found, as `summary.json` and as the table printed at the end.

pub mod checker;
pub mod cluster;
pub mod containers;
pub mod history;
pub mod rejoin;
pub mod scenario;
pub mod summary;
pub mod workload;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random stream `stream` of `seed`: stream 0 draws the fault schedule, stream `1 + i`
/// drives workload client `i`. ChaCha8 is specified, so a seed means the same numbers in
/// every build; separate streams keep the schedule independent of the number of clients.
pub fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
