//! What every binary of the workspace does around its command: logging, the async runtime, and
//! its last word, one line per error and an exit code.

use crate::telemetry::{self, LogFormat};
use std::error::Error;
use std::future::Future;
use std::ops::Deref;
use std::process::ExitCode;

/// Sets up logging in `log_format`, runs `command` on a runtime with `worker_threads` (the
/// default when `None`), and turns its error into one line on stderr and a failure code.
pub fn run_to_exit<F, E>(
    log_format: LogFormat,
    worker_threads: Option<usize>,
    command: F,
) -> ExitCode
where
    F: Future<Output = Result<ExitCode, E>>,
    E: Deref<Target = dyn Error + Send + Sync + 'static>,
{
    telemetry::init_tracing(log_format, "info,sqlx=warn,async_nats=warn");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = worker_threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            let error: &(dyn Error + 'static) = &*e;
            eprintln!("error: {}", telemetry::error_line(error));
            ExitCode::FAILURE
        }
    }
}
