//! The daemon's Helper actor follows banger-helper through restarts without restarting itself.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use chaos_tests::protocol::daemon::{Request, Response};
use chaos_tests::{DaemonOpts, TestDaemon, TestHelper, capable, is_root, wait_until};

async fn helper_detail(d: &TestDaemon) -> (String, u32) {
    let s = d.status().await;
    let h = s.root.children.iter().find(|c| c.name == "helper").unwrap();
    (h.detail.clone().unwrap_or_default(), h.restarts)
}

async fn wait_detail(d: &TestDaemon, needle: &str) {
    wait_until(Duration::from_secs(10), needle, || async {
        helper_detail(d).await.0.contains(needle).then_some(())
    })
    .await;
}

#[tokio::test]
async fn daemon_reconnects_when_the_helper_restarts() {
    if !capable("root", is_root(), "banger-helper runs as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("helper.sock");
    let mut helper = TestHelper::start(&socket, 0).await;
    let d = TestDaemon::start_with(DaemonOpts { helper_socket: Some(socket.clone()), ..Default::default() })
        .await;
    wait_detail(&d, "connected to banger-helper").await;

    helper.kill();
    wait_detail(&d, "waiting for banger-helper").await;
    assert_eq!(d.call(&Request::Ping).await, Response::Pong, "the daemon is unaffected");

    let _helper = TestHelper::start(&socket, 0).await;
    wait_detail(&d, "connected to banger-helper").await;
    assert_eq!(helper_detail(&d).await.1, 0, "losing the helper is not an actor crash");
}
