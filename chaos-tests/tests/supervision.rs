//! The supervisor restarts actors that panic or stop, with backoff, while the socket keeps
//! answering. Needs a bangerd built with `--features bangerd/chaos`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use chaos_tests::protocol::daemon::{ActorState, ActorStatus, ChaosAction, Request, Response, StatusReport};
use chaos_tests::{TestDaemon, wait_until};

fn child<'a>(s: &'a StatusReport, name: &str) -> &'a ActorStatus {
    s.root.children.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no actor {name} in {s:?}"))
}

async fn chaos(d: &TestDaemon, action: ChaosAction) {
    match d.call(&Request::Chaos(action)).await {
        Response::Ok => {}
        other => panic!("chaos request refused ({other:?}): build bangerd with --features bangerd/chaos"),
    }
}

async fn running_with_restarts(d: &TestDaemon, name: &str, restarts: u32) {
    wait_until(
        Duration::from_secs(10),
        &format!("{name} to run again after {restarts} restart(s)"),
        || async {
            let s = d.status().await;
            let c = child(&s, name);
            (c.state == ActorState::Running && c.restarts == restarts).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn panicking_child_is_restarted_and_socket_keeps_answering() {
    let d = TestDaemon::start().await;
    let before = d.status().await;
    assert_eq!(child(&before, "store").restarts, 0);
    assert_eq!(before.root.children.len(), 7, "{before:?}");
    assert!(before.root.children.iter().all(|c| c.state == ActorState::Running), "{before:?}");

    chaos(&d, ChaosAction::Panic { actor: "store".into() }).await;
    running_with_restarts(&d, "store", 1).await;
    let after = d.status().await;
    assert_eq!(child(&after, "store").last_exit.as_deref(), Some("panicked"));
    assert_eq!(child(&after, "api").restarts, 0, "only the panicking actor restarts");
    assert_eq!(d.call(&Request::Ping).await, Response::Pong);
    assert!(d.log_text().contains("child exited; restarting"), "the restart is logged");
}

#[tokio::test]
async fn api_server_restart_keeps_open_connections_and_the_socket() {
    let d = TestDaemon::start().await;
    let mut held = d.client().await;
    chaos(&d, ChaosAction::Panic { actor: "api".into() }).await;
    // A connection opened before the panic is its own actor and survives it.
    assert_eq!(held.call(&Request::Ping).await.unwrap(), Response::Pong);
    // New clients queue in the kernel backlog while the server restarts, then get answers.
    running_with_restarts(&d, "api", 1).await;
    assert_eq!(d.call(&Request::Ping).await, Response::Pong);

    chaos(&d, ChaosAction::Stop { actor: "api".into() }).await;
    running_with_restarts(&d, "api", 2).await;
    assert_eq!(child(&d.status().await, "api").last_exit.as_deref(), Some("stopped"));
}

#[tokio::test]
async fn repeated_failures_back_off_exponentially_and_daemon_stays_up() {
    let d = TestDaemon::start().await;
    chaos(&d, ChaosAction::FailStarts { actor: "store".into(), times: 4 }).await;
    // The first exit is the injected panic; the next four are failed starts.
    let mut delays: Vec<u64> = vec![];
    let mut pings = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(
            d.client().await.call(&Request::Ping).await.unwrap(),
            Response::Pong,
            "the socket answers throughout"
        );
        pings += 1;
        let s = d.status().await;
        let store = child(&s, "store");
        if let ActorState::Restarting { in_ms } = store.state
            && delays.last() != Some(&in_ms)
        {
            delays.push(in_ms);
        }
        if store.state == ActorState::Running && store.restarts == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "store did not recover: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1600], "backoff doubles with each quick exit");
    assert!(pings > 10, "the daemon was polled while the child was down ({pings} pings)");
}

#[tokio::test]
async fn chaos_for_an_unknown_actor_names_the_real_ones() {
    let d = TestDaemon::start().await;
    match d.call(&Request::Chaos(ChaosAction::Panic { actor: "nope".into() })).await {
        Response::Error(e) => {
            assert_eq!(e.kind, chaos_tests::protocol::ErrorKind::NotFound);
            assert_eq!(e.hint.as_deref(), Some("actors: store, helper, images, kernels, network, vms, api"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_supervisor_takes_the_process_down_for_its_manager_to_restart() {
    let mut d = TestDaemon::start().await;
    // The supervisor dies inside the handler, so the reply is an error or nothing at all.
    let reply =
        d.client().await.call(&Request::Chaos(ChaosAction::Panic { actor: "supervisor".into() })).await;
    assert!(!matches!(reply, Ok(Response::Ok)), "{reply:?}");
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "exits non-zero so systemd (Restart=on-failure) restarts it");
    assert!(d.log_text().contains("the supervisor stopped unexpectedly"), "{}", d.log_text());
}
