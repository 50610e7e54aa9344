//! Getting into a VM, each way beside its reference in the same run (QEMU TCG, a networked
//! busybox VM, the agent's built-in ssh server):
//! - `ssh NAME.banger true` (through `banger vm proxy` and the agent's channel), p50/p99 of
//!   20, against `ssh NAME.direct.banger true` (the VM's address over its tap);
//! - a port forward: 256 MiB host → guest, and a small HTTP GET's round trip (p50 of 50),
//!   through the forward against the VM's address.
//!
//! Run: `scripts/dev bench` (as root, with QEMU and the kernel scripts/dev fetches).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench harness: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chaos_tests::bench::{guest_host, ms, percentile};
use chaos_tests::guests::GuestHost;

const SSH_RUNS: usize = 20;
const GETS: usize = 50;
const STREAM_MIB: usize = 256;

fn main() {
    let Some((_rt, g)) = guest_host("access") else { return };
    let fwd_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (http, sink) = (format!("127.0.0.1:{fwd_port}:8000"), format!("127.0.0.1:{}:9000", fwd_port + 1));
    g.ok(&[
        "vm", "run", "-d", "--name", "acc", "--vmm", "qemu", "--cpus", "1", "--memory", "512", "-p", &http,
        "-p", &sink, "busybox",
    ]);
    let ip: std::net::IpAddr = {
        let v: serde_json::Value = serde_json::from_str(&g.ok(&["vm", "inspect", "acc"])).unwrap();
        v["spec"]["ip"].as_str().unwrap().parse().unwrap()
    };
    ssh(&g);
    let serve = "mkdir -p /srv/www && echo hi > /srv/www/index.html && busybox httpd -p 8000 -h /srv/www";
    g.ok(&["vm", "exec", "acc", "--", "sh", "-c", serve]);
    let forward: SocketAddr = ([127, 0, 0, 1], fwd_port).into();
    latency(forward, SocketAddr::new(ip, 8000));
    throughput(&g, ([127, 0, 0, 1], fwd_port + 1).into(), SocketAddr::new(ip, 9000));
    g.ok(&["vm", "rm", "-f", "acc"]);
}

fn ssh(g: &GuestHost) {
    let config = g.host.daemon.dir.path().join("ssh/config");
    let time = |host: &str| {
        let mut v: Vec<Duration> = (0..SSH_RUNS).map(|_| ssh_true(&config, host)).collect();
        (percentile(&mut v, 0.5), percentile(&mut v, 0.99))
    };
    ssh_true(&config, "acc.banger"); // the server's first start is not what is measured
    let (p50, p99) = time("acc.banger");
    let (d50, d99) = time("acc.direct.banger");
    println!("`ssh NAME true`, {SSH_RUNS} runs (p50 / p99), the agent's built-in server under TCG:");
    println!("  through banger vm proxy (ProxyCommand)  {:>7.1} / {:.1} ms", ms(p50), ms(p99));
    println!("  to the VM's address                     {:>7.1} / {:.1} ms", ms(d50), ms(d99));
    println!(
        "  the proxy's cost: {:+.1} ms at p50 (ratio {:.2})",
        ms(p50) - ms(d50),
        p50.as_secs_f64() / d50.as_secs_f64()
    );
}

fn ssh_true(config: &Path, host: &str) -> Duration {
    let t = Instant::now();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(config)
        .args(["-o", "BatchMode=yes", host, "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh {host}: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed()
}

/// A new connection and a small GET, each way.
fn latency(forward: SocketAddr, direct: SocketAddr) {
    let get = |addr: SocketAddr| {
        let t = Instant::now();
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = vec![];
        conn.read_to_end(&mut reply).unwrap();
        assert!(reply.ends_with(b"hi\n"), "{}", String::from_utf8_lossy(&reply));
        t.elapsed()
    };
    get(forward);
    let (mut f, mut d): (Vec<_>, Vec<_>) = (0..GETS).map(|_| (get(forward), get(direct))).unzip();
    let (f50, d50) = (percentile(&mut f, 0.5), percentile(&mut d, 0.5));
    println!("a new connection and a GET, {GETS} runs (p50 / p99):");
    println!("  through the port forward  {:>7.1} / {:.1} ms", ms(f50), ms(percentile(&mut f, 0.99)));
    println!("  to the VM's address       {:>7.1} / {:.1} ms", ms(d50), ms(percentile(&mut d, 0.99)));
    println!("  added by the forward: {:+.1} ms at p50", ms(f50) - ms(d50));
}

/// 256 MiB into a guest `nc -l` that throws it away; timed until the guest side closes.
fn throughput(g: &GuestHost, forward: SocketAddr, direct: SocketAddr) {
    let send = |addr: SocketAddr| {
        // nc ends at end-of-file on its stdin: a sleep holds it open.
        g.ok(&["vm", "exec", "acc", "--", "sh", "-c", "sleep 600 | nc -l -p 9000 > /dev/null 2>&1 &"]);
        // The background nc needs a moment to listen (a forward to nothing resets at once).
        std::thread::sleep(Duration::from_millis(500));
        let mut conn = TcpStream::connect(addr).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7) as u8).collect();
        let t = Instant::now();
        for _ in 0..STREAM_MIB {
            conn.write_all(&block).unwrap();
        }
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = conn.read_to_end(&mut vec![]);
        STREAM_MIB as f64 / t.elapsed().as_secs_f64()
    };
    let (f, d) = (send(forward), send(direct));
    println!("{STREAM_MIB} MiB host → guest (MiB/s):");
    println!("  through the port forward {f:.1}, to the VM's address {d:.1}: ratio {:.2}", f / d);
}
