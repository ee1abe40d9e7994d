//! The compose smoke test: `cluster/compose-smoke.sh` with the `strata` binary of this build.
//!
//! The script builds the image from that binary, starts `docker-compose.yml` under a compose
//! project of its own on free ports, writes and reads 1,000 keys from the host with the CLI,
//! adds a 4th node, kills one container, reads every key again, and brings everything down
//! (`down -v`, and the image tag it made) whether it passed or not. Every wait in it is
//! bounded. Needs Docker with `docker compose` or `docker-compose`.

use std::path::Path;
use std::process::Command;

#[test]
fn compose_cluster_serves_the_host_and_survives_a_killed_container() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new("bash")
        .arg(root.join("cluster/compose-smoke.sh"))
        .env("STRATA_BINARY", env!("CARGO_BIN_EXE_strata"))
        .current_dir(&root)
        .status()
        .expect("running bash cluster/compose-smoke.sh");
    assert!(status.success(), "the compose smoke test failed: {status}");
}
