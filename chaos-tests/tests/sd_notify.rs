//! bangerd under a (test) service manager: READY once the socket answers, WATCHDOG at half the
//! interval, STOPPING on SIGTERM, then a clean exit in reverse start order.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use chaos_tests::protocol::channel::{Client, Daemon};
use chaos_tests::protocol::daemon::{Request, Response};
use chaos_tests::{DaemonOpts, TestDaemon};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn next_line(sock: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    let left = deadline.checked_duration_since(Instant::now())?;
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let opts = DaemonOpts {
        // 400 ms watchdog → a WATCHDOG=1 every 200 ms.
        env: vec![
            ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..Default::default()
    };
    let mut d = TestDaemon::start_with(opts).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![];
    let mut watchdogs = 0;
    while watchdogs < 2 {
        let line =
            next_line(&notify, deadline).unwrap_or_else(|| panic!("no WATCHDOG=1 twice; saw {seen:?}"));
        if line.contains("READY=1") {
            // READY means the socket answers: check it does.
            let mut c = Client::<Daemon>::connect(&d.socket, "test").await.unwrap();
            assert_eq!(c.call(&Request::Ping).await.unwrap(), Response::Pong);
        }
        if line.contains("WATCHDOG=1") {
            assert!(seen.iter().any(|l: &String| l.contains("READY=1")), "WATCHDOG before READY: {seen:?}");
            watchdogs += 1;
        }
        seen.push(line);
    }

    kill(Pid::from_raw(d.pid() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = next_line(&notify, deadline).unwrap_or_else(|| panic!("no STOPPING=1; saw {seen:?}"));
        if line.contains("STOPPING=1") {
            break;
        }
        seen.push(line);
    }
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "bangerd exited with {status}");
    assert!(!d.socket.exists(), "the socket is removed on exit");
    // Reverse start order.
    let log = d.log_text();
    let order: Vec<usize> = ["api", "vms", "network", "kernels", "images", "helper", "store"]
        .iter()
        .map(|k| format!("\"child\":\"{k}\""))
        .map(|k| log.find(&k).unwrap_or_else(|| panic!("{k} not stopped: {log}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "shutdown order wrong: {log}");
}
