//! Port forwards through the daemon and the agent's channel (the VMs here have no network):
//! a server in the guest answers on the host port, and again after bangerd is killed and
//! restarted; a taken host port and a guest port nobody listens on give clear answers.
//! Capability `qemu`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use chaos_tests::guests::GuestHost;
use chaos_tests::stderr;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP GET of `/` on `addr`: the body, or why not.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    body.ok_or_else(|| format!("no HTTP reply: {reply:?}"))
}

/// `get` until it answers, for up to `within`.
fn get_within(addr: SocketAddr, within: Duration) -> String {
    let started = Instant::now();
    loop {
        match get(addr) {
            Ok(body) => return body,
            Err(e) if started.elapsed() > within => panic!("{addr} did not answer within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_server_answers_on_the_host_port_and_again_after_bangerd_is_killed() {
    let Some(mut g) = GuestHost::start().await else { return };
    let port = free_port();
    let publish = format!("localhost:{port}:8000");
    let mut args = vec!["vm", "run", "-d", "--name", "web", "-p", &publish];
    args.extend(GuestHost::VM);
    args.push("busybox");
    g.ok(&args);
    // busybox httpd serves /srv/www on the guest's loopback only: no network at all.
    let serve = "mkdir -p /srv/www && echo hello from $(hostname) > /srv/www/index.html && \
                 busybox httpd -p 127.0.0.1:8000 -h /srv/www";
    g.ok(&["vm", "exec", "web", "--", "sh", "-c", serve]);
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get_within(v4, Duration::from_secs(10)), "hello from web\n");
    // localhost means both loopbacks (where this host has IPv6 on lo).
    if TcpListener::bind("[::1]:0").is_ok() {
        assert_eq!(get(format!("[::1]:{port}").parse().unwrap()).unwrap(), "hello from web\n");
    }
    let ls = g.ok(&["vm", "ls"]);
    assert!(ls.contains(&format!("{port}→8000")), "vm ls shows the forward: {ls}");
    let listed: serde_json::Value =
        serde_json::from_str(&g.ok(&["--json", "vm", "port", "ls", "web"])).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{"host_addr": "localhost", "host_port": port, "guest_port": 8000}])
    );

    // Several at once, with more than a window of data each way is exercised by the bench; here
    // many small ones in parallel.
    let answers: Vec<_> = (0..8).map(|_| std::thread::spawn(move || get(v4))).collect();
    for a in answers {
        assert_eq!(a.join().unwrap().unwrap(), "hello from web\n");
    }

    // Kept across a daemon that dies without a word: the new one listens again.
    g.host.daemon.restart().await;
    assert_eq!(get_within(v4, Duration::from_secs(30)), "hello from web\n", "after kill -9 of bangerd");

    // A host port another program holds: refused, saying which and what to do.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let out = g.cli(&["vm", "port", "add", "web", &format!("127.0.0.1:{taken}:8000")]);
    assert!(!out.status.success(), "a taken port must be refused");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{taken}"))
            && err.contains("pick another host port"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&g.ok(&["vm", "inspect", "web"])).unwrap();
    assert_eq!(v["ports"].as_array().unwrap().len(), 1, "the refused forward is not kept: {v}");
    let held = format!("127.0.0.1:{taken}:80");
    let mut args = vec!["vm", "run", "--rm", "--name", "late", "-p", &held];
    args.extend(GuestHost::VM);
    args.extend(["busybox", "--", "true"]);
    let out = g.cli(&args);
    assert!(!out.status.success(), "vm run -p on a taken port must fail");
    assert!(stderr(&out).contains(&format!("cannot listen on 127.0.0.1:{taken}")), "{}", stderr(&out));

    // A guest port nobody listens on: added, with a warning; a connection is reset at once.
    let idle = free_port();
    let out = g.cli(&["vm", "port", "add", "web", &format!("{idle}:9")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing listens on port 9"), "{}", stderr(&out));
    let started = Instant::now();
    let refused = get(format!("127.0.0.1:{idle}").parse().unwrap());
    assert!(refused.is_err(), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused promptly: {:?}", started.elapsed());

    // Removed: the host port is free again.
    g.ok(&["vm", "port", "rm", "web", &port.to_string()]);
    assert!(TcpStream::connect(v4).is_err(), "nothing listens after vm port rm");
    let out = g.cli(&["vm", "port", "rm", "web", &port.to_string()]);
    assert!(stderr(&out).contains("forwards no host port"), "{}", stderr(&out));
    drop(holder);
}
