//! `bench`: figures measured against the machine's own ceilings (see issue 8).

use crate::cli::BenchArgs;
use thiserror::Error;

/// Why the bench could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Not written yet.
    #[error("the bench command is not available yet")]
    NotYet,
}

/// Runs the bench.
///
/// # Errors
/// [`BenchError`].
pub async fn run(_args: &BenchArgs) -> Result<(), BenchError> {
    Err(BenchError::NotYet)
}
