//! `--help` of every command, run as an operator would with the URLs (credentials included) in
//! the environment: no credential appears, the variables' names do.

use std::process::Command;

const SENTINEL: &str = "S3ntinel-Pa55w0rd-h3lp";

const COMMANDS: &[&str] = &[
    "migrate", "relay", "replay", "append", "read", "tail", "status", "parked", "release",
];

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_edupulse-events"))
        .args(args)
        .env(
            "DATABASE_URL",
            format!("postgres://app:{SENTINEL}@db.example:5432/edupulse"),
        )
        .env(
            "NATS_URL",
            format!("nats://app:{SENTINEL}@nats.example:4222"),
        )
        .output()
        .expect("run edupulse-events");
    assert!(output.status.success(), "{args:?}: {output:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_never_shows_a_credential_from_the_environment() {
    let top = help(&["--help"]);
    assert!(!top.contains(SENTINEL), "{top}");
    for command in COMMANDS {
        let text = help(&[command, "--help"]);
        assert!(!text.contains(SENTINEL), "{command} --help:\n{text}");
        if text.contains("--database-url") {
            assert!(text.contains("DATABASE_URL"), "{command} --help:\n{text}");
        }
        if text.contains("--nats-url") {
            assert!(text.contains("NATS_URL"), "{command} --help:\n{text}");
        }
    }
}
