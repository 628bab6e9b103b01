//! The image names of the harness and of the build script agree.

use edupulse_integration_tests::images::{NATS_IMAGE, NATS_TAG, POSTGRES_IMAGE, POSTGRES_TAG};

const SCRIPT: &str = include_str!("../../../scripts/build-images.sh");

#[test]
fn image_names_match_the_build_script() {
    assert!(
        SCRIPT.contains(&format!("PG_IMAGE=\"{POSTGRES_IMAGE}:{POSTGRES_TAG}\"")),
        "scripts/build-images.sh must build {POSTGRES_IMAGE}:{POSTGRES_TAG}"
    );
    assert!(
        SCRIPT.contains(&format!("NATS_IMAGE=\"{NATS_IMAGE}:{NATS_TAG}\"")),
        "scripts/build-images.sh must build {NATS_IMAGE}:{NATS_TAG}"
    );
}

#[test]
fn unique_names_are_valid_nats_tokens() {
    let a = edupulse_integration_tests::unique_name("orders.v1 *>");
    let b = edupulse_integration_tests::unique_name("orders.v1 *>");
    assert_ne!(a, b);
    assert!(a.starts_with("orders_v1___"), "{a}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{a}"
    );
}
