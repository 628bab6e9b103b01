//! `edupulse-events`: the command-line entry point. All logic lives in the library; this file
//! parses arguments, sets up logging, and turns errors into one clear line and an exit code.

use anyhow::Context;
use clap::Parser;
use edupulse_app::cli::{Cli, Command, ProjectionsCommand};
use edupulse_app::relay::ReplayMode;
use edupulse_app::{commands, entry};
use edupulse_ports::Release;
use std::process::ExitCode;

/// mimalloc rather than the system allocator: the relay allocates and frees many small buffers
/// per event (rows, JSON, headers), and glibc's malloc spent about a third of the relay's CPU on
/// them during a catch-up. Only the binary chooses; the libraries leave it to their users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Relay(args) => Some(args.threads),
        _ => None,
    };
    entry::run_to_exit(cli.global.log_format, threads, run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { pg } => commands::migrate(&pg).await.context("migrate")?,
        Command::Relay(args) => commands::relay(&args).await.context("relay")?,
        Command::Replay {
            pg,
            nats,
            from,
            to,
            force,
        } => commands::replay(&pg, &nats, from..=to, replay_mode(force))
            .await
            .context("replay")?,
        Command::Append(args) => {
            let failed = commands::append(&args).await.context("append")?;
            if failed > 0 {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Read(args) => commands::read(&args).await.context("read")?,
        Command::Tail {
            nats,
            durable,
            event_type,
            max,
        } => commands::tail(&nats, &durable, event_type.as_deref(), max)
            .await
            .context("tail")?,
        Command::Status { pg, nats, name } => commands::status(&pg, &nats, &name)
            .await
            .context("status")?,
        Command::Project(args) => commands::project(&args).await.context("project")?,
        Command::Projections { action } => projections(action).await?,
        Command::Parked { pg, name } => commands::parked(&pg, &name).await.context("parked")?,
        Command::Release {
            pg,
            name,
            stream,
            skip,
        } => commands::release(&pg, &name, &stream, release_of(skip))
            .await
            .context("release")?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn projections(action: ProjectionsCommand) -> anyhow::Result<()> {
    match action {
        ProjectionsCommand::Status { pg, which } => commands::projection_status(&pg, &which)
            .await
            .context("projections status")?,
        ProjectionsCommand::Parked { pg, which } => commands::projection_parked(&pg, &which)
            .await
            .context("projections parked")?,
        ProjectionsCommand::Retry { pg, which, stream } => commands::retry(&pg, &which, &stream)
            .await
            .context("projections retry")?,
        ProjectionsCommand::Skip { pg, which, stream } => commands::skip(&pg, &which, &stream)
            .await
            .context("projections skip")?,
        ProjectionsCommand::Activate { pg, which } => commands::activate(&pg, &which)
            .await
            .context("projections activate")?,
    }
    Ok(())
}

fn replay_mode(force: bool) -> ReplayMode {
    if force {
        ReplayMode::Force
    } else {
        ReplayMode::Missing
    }
}

fn release_of(skip: bool) -> Release {
    if skip { Release::Skip } else { Release::Retry }
}
