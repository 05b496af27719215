//! A test process's server: started on first use, a fresh database each time.

#[test]
fn databases_are_fresh_and_distinct() {
    let a = spacesync_pgtest::database();
    let b = spacesync_pgtest::database();
    assert_ne!(a, b);
    assert!(spacesync_pgtest::shared().pid().is_some());
}
