//! The lab's command line: `demo`, `bench`, and the relay the bench runs in a process of its own.

use clap::{Args, Parser, Subcommand, ValueEnum};
use edupulse_app::cli::{GlobalArgs, NatsArgs, PgArgs, RelayArgs};
use std::path::PathBuf;

/// `edupulse-lab`: the demo and the bench of the EduPulse event backbone.
#[derive(Debug, Parser)]
#[command(name = "edupulse-lab", version, about, long_about = None)]
pub struct LabCli {
    /// Options of every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// The lab's commands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// The whole path end to end: starts PostgreSQL and NATS in Docker unless DATABASE_URL and
    /// NATS_URL are set, migrates, runs the relay, appends a realistic workload concurrently,
    /// consumes everything and checks it arrived exactly once and in order.
    Demo(DemoArgs),
    /// Measure throughput and latency against the machine's own ceilings (see the README).
    Bench(BenchArgs),
    /// The production relay (`edupulse-events relay`), which the bench's catch-up runs in a
    /// process of its own.
    #[command(hide = true)]
    Relay(RelayArgs),
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// PostgreSQL options (leave DATABASE_URL unset to use Docker).
    #[command(flatten)]
    pub pg: PgArgs,
    /// NATS options (leave NATS_URL unset to use Docker).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Events to append.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
}

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// PostgreSQL options (leave DATABASE_URL unset to use Docker).
    #[command(flatten)]
    pub pg: PgArgs,
    /// NATS options (leave NATS_URL unset to use Docker).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// A small run to check the command works (CI), not to measure.
    #[arg(long)]
    pub quick: bool,
    /// Runs of the live phase's paced rate of 5,000 events/s, so that its commit → ack p99 is
    /// judged on a distribution (min, median, max, runs under 10 ms), not on one run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Events in the relay catch-up backlog.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Run only these phases (comma-separated), to iterate on one figure. The raw ceilings
    /// (rows 1 and 2) always run, since every ratio is taken against them.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<BenchPhase>,
    /// Where to write the JSON report and the SVG chart.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Which database the bench writes into, when `DATABASE_URL` is given.
    #[arg(long, value_enum, default_value_t = BenchDatabase::Own)]
    pub bench_database: BenchDatabase,
}

/// Which database the bench writes into (`--bench-database`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchDatabase {
    /// A database of its own, created beside the given one and dropped at the end (needs
    /// `CREATEDB`); the bench stops if it cannot create it.
    Own,
    /// The given database itself: the events the bench appends stay in its append-only events
    /// table. Only for a scratch database.
    Given,
}

/// A phase of `bench` that can be selected with `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPhase {
    /// Row 3: the seed's design.
    Seed,
    /// Row 4: the store's append, every batch size and caller count.
    Store,
    /// Rows 5 and 7: the relay catching up from the backlog, and its peak RSS.
    Catchup,
    /// Row 6 and end to end: commit → ack at paced rates, then append + relay at full speed.
    Live,
    /// Row 8: the achievements projection with 4 workers, applying the published backlog.
    Projection,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        LabCli::command().debug_assert();
    }
}
