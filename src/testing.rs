//! Helpers for the unit tests. They run unprivileged (`tests/unprivileged.sh`): a test
//! that truly needs root says why with [`require_root`].

/// Whether a test that needs root may go on: true as root. Not root, it panics, unless
/// `WARREN_TEST_UNPRIVILEGED=1` says the suite runs unprivileged on purpose: then it
/// prints `TEST: SKIPPED (needs root: why)` and returns false, and the test returns.
pub(crate) fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("WARREN_TEST_UNPRIVILEGED").is_some_and(|v| v == "1") {
        // Straight to fd 2: the test harness captures eprintln!, and a skip must show.
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("test").to_string();
        let _ = writeln!(std::io::stderr(), "{test}: SKIPPED (needs root: {why})");
        return false;
    }
    panic!(
        "this test needs root ({why}): run it as root, or set WARREN_TEST_UNPRIVILEGED=1 to \
         skip the tests that need root"
    );
}

mod mutator;
pub(crate) use mutator::Mutator;
