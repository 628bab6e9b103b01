//! edupulse-events
fn main() {}
