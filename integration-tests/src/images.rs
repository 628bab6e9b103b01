//! The test images: their names (the one place on the Rust side; mirrored in
//! `scripts/build-images.sh`) and their build on demand.

use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::OnceCell;

/// Repository of the PostgreSQL test image (`docker/postgres`).
pub const POSTGRES_IMAGE: &str = "edupulse-test/postgres";
/// Tag of the PostgreSQL test image.
pub const POSTGRES_TAG: &str = "15";
/// Repository of the NATS test image (`docker/nats`).
pub const NATS_IMAGE: &str = "edupulse-test/nats";
/// Tag of the NATS test image.
pub const NATS_TAG: &str = "2.10";

/// Set to `1` to skip running the build script (the images must exist then).
pub const SKIP_BUILD_ENV: &str = "EDUPULSE_TEST_SKIP_IMAGE_BUILD";

/// The image build script, from the recipes embedded in this harness (see [`crate::recipes`]):
/// the suites and the lab build their images the same way.
///
/// # Panics
/// When the recipes cannot be written to the temporary directory.
pub fn build_script() -> PathBuf {
    let root = crate::recipes::default_root();
    crate::recipes::write_to(&root)
        .unwrap_or_else(|e| panic!("cannot write the image recipes to {}: {e}", root.display()))
}

static IMAGES_READY: OnceCell<()> = OnceCell::const_new();

/// Makes sure both test images exist and are up to date, by running
/// `scripts/build-images.sh` once per process (later calls return at once).
///
/// The script takes ~0.1 s when the images are current, about a minute on a
/// machine that has none. It holds a `flock`, so test binaries running at the
/// same time do not build twice.
///
/// # Panics
///
/// When the script fails; its output is in the panic message. A later call
/// tries again.
pub async fn ensure_images() {
    IMAGES_READY
        .get_or_init(|| async {
            if std::env::var(SKIP_BUILD_ENV).is_ok_and(|v| v == "1") {
                return;
            }
            let started = Instant::now();
            let script = build_script();
            let output = tokio::process::Command::new("bash")
                .arg(&script)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                panic!(
                    "{} failed ({}):\n{}{}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    stderr
                );
            }
            eprintln!(
                "edupulse-test: images ready in {:.2?} ({})",
                started.elapsed(),
                stderr.lines().last().unwrap_or_default()
            );
        })
        .await;
}
