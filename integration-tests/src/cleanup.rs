//! Labels on every container and network of the harness, and the reaper that
//! removes them when the test process exits.
//!
//! Owned handles ([`crate::PgContainer`], [`crate::NatsContainer`],
//! [`crate::NatsCluster`]) remove their containers when dropped. The shared
//! containers live in statics, which are never dropped, so the first container
//! started by a process also starts a reaper: a `sh` process in its own process
//! group (a Ctrl-C of the test run does not reach it) that reads its stdin until
//! end of file. The write end of that pipe is held by the test process, and the
//! kernel closes it when the process ends, however it ends (normal exit, panic,
//! SIGKILL). The reaper then removes every container and network labelled with
//! this process's session id.
//!
//! testcontainers' `watchdog` feature is not used: it only acts on SIGINT,
//! SIGTERM and SIGQUIT, not at a normal exit (when the statics are the
//! problem), nor at a SIGKILL.
//!
//! At start the reaper also runs `scripts/cleanup-test-containers.sh --stale`,
//! removing leftovers of test processes of this host that no longer exist
//! (e.g. a reaper that was itself killed).

use std::io::Write as _;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Label present (value `1`) on every container and network of the harness.
pub const LABEL: &str = "edupulse-test";
/// Label holding the id of the test process that created the object.
pub const PID_LABEL: &str = "edupulse-test.pid";
/// Label holding the session id of the test process that created the object.
pub const SESSION_LABEL: &str = "edupulse-test.session";
/// Label holding the host name of the machine (or container) the test
/// process runs on: [`PID_LABEL`] only means something there.
pub const HOST_LABEL: &str = "edupulse-test.host";

/// This machine's host name (empty when unknown).
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
}

/// The id of this process's session: 12 hex digits, unique per test process.
/// Also used in container and network names.
pub fn session_id() -> &'static str {
    static SESSION: OnceLock<String> = OnceLock::new();
    SESSION.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
}

/// The labels to put on a container or network of this process.
pub fn labels() -> Vec<(String, String)> {
    vec![
        (LABEL.to_owned(), "1".to_owned()),
        (PID_LABEL.to_owned(), std::process::id().to_string()),
        (SESSION_LABEL.to_owned(), session_id().to_owned()),
        (HOST_LABEL.to_owned(), host_name().to_owned()),
    ]
}

/// Path of `scripts/cleanup-test-containers.sh` in this workspace.
pub fn cleanup_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/cleanup-test-containers.sh")
}

const REAPER_SCRIPT: &str = r#"
trap '' INT TERM HUP
[ ! -x "$2" ] || "$2" --stale >/dev/null 2>&1 &
cat >/dev/null 2>&1
c=$(docker ps -aq --filter "label=edupulse-test.session=$1" 2>/dev/null)
[ -z "$c" ] || docker rm -f -v $c >/dev/null 2>&1
n=$(docker network ls -q --filter "label=edupulse-test.session=$1" 2>/dev/null)
[ -z "$n" ] || docker network rm $n >/dev/null 2>&1
exit 0
"#;

/// Starts the reaper of this process once (later calls do nothing). Called by
/// every function of the harness that creates a container or network.
///
/// Failing to start it (no `sh`) is reported on stderr, not fatal:
/// `scripts/cleanup-test-containers.sh` still removes the leftovers.
pub fn ensure_reaper() {
    static REAPER: OnceLock<Option<Mutex<ChildStdin>>> = OnceLock::new();
    REAPER.get_or_init(|| {
        use std::os::unix::process::CommandExt as _;
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("edupulse-test-reaper")
            .arg(session_id())
            .arg(cleanup_script())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut child) => child.stdin.take().map(|mut stdin| {
                // nothing is ever written; the pipe only has to stay open
                let _ = stdin.flush();
                Mutex::new(stdin)
            }),
            Err(e) => {
                eprintln!("edupulse-test: cannot start the container reaper: {e}");
                None
            }
        }
    });
}
