//! The image recipes (`scripts/build-images.sh` and `docker/`), embedded in the binary.
//!
//! The demo and the bench build their images from Debian packages when they are missing (no
//! registry is assumed). An installed or copied binary has no checkout beside it, so it carries
//! the recipes and writes them to a directory of its own before running the script. The script
//! hashes its recipes independently of where they are, so images built from a checkout and from
//! the embedded copy are recognised as the same.

use std::io;
use std::path::{Path, PathBuf};

/// Every file of the recipes: path under the recipes' root, contents, executable.
const FILES: &[(&str, &str, bool)] = &[
    (
        "scripts/build-images.sh",
        include_str!("../../scripts/build-images.sh"),
        true,
    ),
    (
        "docker/nats/Dockerfile",
        include_str!("../../docker/nats/Dockerfile"),
        false,
    ),
    (
        "docker/postgres/Dockerfile",
        include_str!("../../docker/postgres/Dockerfile"),
        false,
    ),
    (
        "docker/postgres/docker-entrypoint.sh",
        include_str!("../../docker/postgres/docker-entrypoint.sh"),
        true,
    ),
    (
        "docker/postgres/slim.sh",
        include_str!("../../docker/postgres/slim.sh"),
        false,
    ),
];

/// Writes the recipes under `root` (created if needed) and returns the build script's path.
///
/// # Errors
/// The file system's.
pub fn write_to(root: &Path) -> io::Result<PathBuf> {
    for (path, contents, executable) in FILES {
        let target = root.join(path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&target, contents)?;
        set_mode(&target, *executable)?;
    }
    Ok(root.join("scripts/build-images.sh"))
}

/// Where [`write_to`] puts them by default: a directory of this user's temporary directory,
/// named after the recipes' contents, so concurrent runs of one build share it.
pub fn default_root() -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, contents, _) in FILES {
        for byte in path.bytes().chain(contents.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    std::env::temp_dir().join(format!("edupulse-lab-recipes-{hash:016x}"))
}

#[cfg(unix)]
fn set_mode(path: &Path, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_recipes_are_the_checkout_s() {
        let root =
            std::env::temp_dir().join(format!("edupulse-recipes-test-{}", std::process::id()));
        let script = write_to(&root).unwrap();
        assert!(script.ends_with("scripts/build-images.sh"));
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (path, _, _) in FILES {
            assert_eq!(
                std::fs::read(root.join(path)).unwrap(),
                std::fs::read(checkout.join(path)).unwrap(),
                "{path}"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
