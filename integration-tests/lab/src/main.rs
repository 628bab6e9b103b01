//! `edupulse-lab`: the demo and the bench. Parses, sets up logging, and turns errors into one
//! line and an exit code; everything else is in the library.

use anyhow::Context;
use clap::Parser;
use edupulse_app::{commands, telemetry};
use edupulse_lab::cli::{LabCli, LabCommand};
use edupulse_lab::{bench, demo};
use std::process::ExitCode;

/// The same allocator as `edupulse-events`: the bench's relay runs in this binary, and its
/// figures must be the production relay's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = LabCli::parse();
    telemetry::init_tracing(cli.global.log_format, "info,sqlx=warn,async_nats=warn");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let LabCommand::Relay(args) = &cli.command {
        runtime.worker_threads(args.threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", telemetry::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
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
