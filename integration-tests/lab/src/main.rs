//! `edupulse-lab`: the demo and the bench. Parses, sets up logging, and turns errors into one
//! line and an exit code; everything else is in the library.

use anyhow::Context;
use clap::Parser;
use edupulse_app::{commands, entry};
use edupulse_lab::cli::{LabCli, LabCommand};
use edupulse_lab::{bench, demo};
use std::process::ExitCode;

/// The same allocator as `edupulse-events`: the bench's relay runs in this binary, and its
/// figures must be the production relay's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = LabCli::parse();
    let threads = match &cli.command {
        LabCommand::Relay(args) => Some(args.threads),
        _ => None,
    };
    entry::run_to_exit(cli.global.log_format, threads, run(cli.command))
}

async fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Demo(args) => {
            let report = demo::run(&args).await.context("demo")?;
            demo::print(&report);
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Bench(args) => bench::run(&args).await.context("bench")?,
        LabCommand::Relay(args) => commands::relay(&args).await.context("relay")?,
    }
    Ok(ExitCode::SUCCESS)
}
