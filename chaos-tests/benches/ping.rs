//! Ping round trip over the real daemon socket, and the whole-process time of `banger version`.
//!
//! Each figure is printed beside a floor measured in the same run, since this machine is noisy:
//! a bare seqpacket echo (kernel + tokio, no banger code) for the ping, and spawning `/bin/true`
//! for the CLI. Targets (docs/performance.md): ping p50 ≤ 30 µs, `banger version` median ≤ 5 ms.
//!
//! Run: `cargo build --release --workspace --features bangerd/chaos && cargo bench -p chaos-tests`

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench harness: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::TestDaemon;
use chaos_tests::protocol::daemon::{Request, Response};
use tokio_seqpacket::UnixSeqpacket;

const WARMUP: usize = 1_000;
const SAMPLES: usize = 10_000;
const PROCESS_RUNS: usize = 200;

struct Figures(Vec<Duration>);

impl Figures {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn line(&self, name: &str) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        format!(
            "{name:<34} p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs  (n={})",
            us(self.pct(0.5)),
            us(self.pct(0.9)),
            us(self.pct(0.99)),
            self.0.len()
        )
    }
}

async fn daemon_pings(d: &TestDaemon) -> Figures {
    let mut c = d.client().await;
    for _ in 0..WARMUP {
        assert_eq!(c.call(&Request::Ping).await.unwrap(), Response::Pong);
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let r = c.call(&Request::Ping).await.unwrap();
        samples.push(t.elapsed());
        assert_eq!(r, Response::Pong);
    }
    Figures(samples)
}

/// The floor: the same socket type and runtime, echoing one byte with no protocol at all.
async fn bare_echo() -> Figures {
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok(info) = b.recv(&mut buf).await {
            if info.bytes_read() == 0 || b.send(&buf[..info.bytes_read()]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let t = Instant::now();
        a.send(&[1, 0]).await.unwrap();
        a.recv(&mut buf).await.unwrap();
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    drop(a);
    server.await.unwrap();
    Figures(samples)
}

fn process_times(mut cmd: impl FnMut() -> Command) -> Figures {
    let run = |cmd: &mut Command| {
        let t = Instant::now();
        let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(status.success());
        t.elapsed()
    };
    for _ in 0..10 {
        run(&mut cmd());
    }
    Figures((0..PROCESS_RUNS).map(|_| run(&mut cmd())).collect())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: keep that run short.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("ping bench: run with `cargo bench -p chaos-tests` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let d = TestDaemon::start().await;
        let ping = daemon_pings(&d).await;
        let floor = bare_echo().await;
        let banger = chaos_tests::bin("banger");
        let dir = d.dir.path().to_path_buf();
        let version = process_times(|| {
            let mut c = Command::new(&banger);
            c.arg("--state-dir").arg(&dir).arg("version");
            c
        });
        let true_ = process_times(|| Command::new("true"));

        println!("{}", ping.line("ping over bangerd socket"));
        println!("{}", floor.line("floor: bare seqpacket echo"));
        println!(
            "ratio ping/floor at p50: {:.2}",
            ping.pct(0.5).as_secs_f64() / floor.pct(0.5).as_secs_f64()
        );
        println!("{}", version.line("`banger version` whole process"));
        println!("{}", true_.line("floor: spawn /bin/true"));
        println!(
            "ratio version/true at p50: {:.2}",
            version.pct(0.5).as_secs_f64() / true_.pct(0.5).as_secs_f64()
        );
        let p50 = ping.pct(0.5);
        let v50 = version.pct(0.5);
        println!(
            "targets: ping p50 ≤ 30 µs: {} ({:.1} µs); banger version median ≤ 5 ms: {} ({:.2} ms)",
            if p50 <= Duration::from_micros(30) { "met" } else { "MISSED" },
            p50.as_secs_f64() * 1e6,
            if v50 <= Duration::from_millis(5) { "met" } else { "MISSED" },
            v50.as_secs_f64() * 1e3
        );
    });
}
