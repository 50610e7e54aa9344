//! VM benchmarks on real Firecracker with the test kernel, each beside its reference:
//! - create + start + stop through `banger`, against a bare `firecracker --no-api
//!   --config-file` of the same VM (same kernel, arguments, drive, vsock, log and metrics;
//!   boot to exit), interleaved in the same run (target ratio ≤ 1.5); banger's three phases
//!   are printed apart;
//! - 50 VMs started at once: time and starts/s (target ≥ 20/s);
//! - bangerd's RSS idle (fresh) and per running VM: 50 VMs against the daemon with no VM just
//!   before them (targets ≤ 15 MiB idle, ≤ 100 KiB per VM).
//!
//! Run: `scripts/dev bench` (as root, with Firecracker installed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench harness: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use chaos_tests::vms::VmHost;
use chaos_tests::{TEST_KERNEL, firecracker, rss_kib};

const ROUNDS: usize = 60;
const MANY: usize = 50;

fn median(v: Vec<Duration>) -> Duration {
    quartiles(v).1
}

/// p25, p50, p75.
fn quartiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("VM benches: run with `cargo bench -p chaos-tests` to measure");
        return;
    }
    let Some(fc) = firecracker() else {
        eprintln!("VM benches skipped: firecracker or /dev/kvm is missing");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Some(host) = rt.block_on(VmHost::start()) else {
        eprintln!("VM benches skipped: they need root");
        return;
    };
    let idle_kib = rss_kib(host.daemon.pid());

    // The reference: the same VM booted to its exit by a bare Firecracker: same kernel and
    // arguments, a copy of a banger VM's disk as its drive, a vsock, a log and metrics file,
    // as banger configures it. (Each device costs Firecracker time at exit too: a VM without
    // the drive tears down ~7 ms faster here, so leaving it out would not be the same VM.)
    let dir = tempfile::tempdir().unwrap();
    host.create("disk-source", "reset");
    let disk = dir.path().join("disk.ext4");
    std::fs::copy(host.daemon.dir.path().join("vms/disk-source/disk.ext4"), &disk).unwrap();
    host.ok(&["vm", "rm", "disk-source"]);
    let (log, metrics, vsock) =
        (dir.path().join("fc.log"), dir.path().join("metrics.json"), dir.path().join("vsock.sock"));
    std::fs::write(&log, "").unwrap();
    std::fs::write(&metrics, "").unwrap();
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": { "kernel_image_path": TEST_KERNEL, "boot_args": "console=ttyS0 reboot=k panic=1 banger.mode=reset" },
        "drives": [{ "drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false }],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 32 },
        "vsock": { "guest_cid": 3, "uds_path": vsock },
        "logger": { "log_path": log, "level": "Info" },
        "metrics": { "metrics_path": metrics },
    });
    std::fs::write(&config, json.to_string()).unwrap();
    // Interleaved, so drift on this noisy host falls on both alike.
    let (mut raw, mut ours) = (vec![], vec![]);
    let mut phases: [Vec<Duration>; 3] = Default::default();
    for i in 0..ROUNDS {
        let _ = std::fs::remove_file(&vsock);
        let t = Instant::now();
        let out = Command::new(&fc).args(["--no-api", "--config-file"]).arg(&config).output().unwrap();
        raw.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

        let name = format!("bench{i}");
        let t = Instant::now();
        host.create(&name, "reset");
        let created = t.elapsed();
        host.ok(&["vm", "start", &name]);
        let started = t.elapsed();
        host.ok(&["vm", "stop", &name]);
        let stopped = t.elapsed();
        ours.push(stopped);
        phases[0].push(created);
        phases[1].push(started - created);
        phases[2].push(stopped - started);
        host.ok(&["vm", "rm", &name]);
    }
    let ((o25, o, o75), (r25, r, r75)) = (quartiles(ours), quartiles(raw));
    println!("create + start + stop of a test-kernel VM, median of {ROUNDS}, interleaved:");
    println!(
        "  banger vm create/start/stop            {:>8.1} ms (p25 {:.1}, p75 {:.1})",
        ms(o),
        ms(o25),
        ms(o75)
    );
    println!(
        "  firecracker --no-api --config-file     {:>8.1} ms (p25 {:.1}, p75 {:.1})",
        ms(r),
        ms(r25),
        ms(r75)
    );
    let [c, s, p] = phases.map(median);
    println!("    of which create {:.1} ms, start {:.1} ms, stop {:.1} ms (medians)", ms(c), ms(s), ms(p));
    let ratio = o.as_secs_f64() / r.as_secs_f64();
    println!(
        "  ratio banger/firecracker: {ratio:.2} (target ≤ 1.5: {})",
        if ratio <= 1.5 { "met" } else { "MISSED" }
    );

    // The baseline for the per-VM figure: no VM, after the rounds above (what the daemon's
    // allocator kept from them is not any VM's cost).
    let before_kib = rss_kib(host.daemon.pid());
    let names: Vec<String> = (0..MANY).map(|i| format!("many{i:02}")).collect();
    for n in &names {
        host.create(n, "wait");
    }
    let t = Instant::now();
    std::thread::scope(|s| {
        for n in &names {
            let host = &host;
            s.spawn(move || host.ok(&["vm", "start", n]));
        }
    });
    let took = t.elapsed();
    let rate = MANY as f64 / took.as_secs_f64();
    println!(
        "{MANY} VMs started at once: {:.0} ms, {rate:.1} starts/s (target ≥ 20/s: {})",
        ms(took),
        if rate >= 20.0 { "met" } else { "MISSED" }
    );
    let busy_kib = rss_kib(host.daemon.pid());
    let per_vm = (busy_kib.saturating_sub(before_kib)) as f64 / MANY as f64;
    println!(
        "bangerd RSS: {:.1} MiB idle (target ≤ 15: {}); {:.1} MiB with no VM after the rounds, {:.1} MiB with {MANY} running: {per_vm:.0} KiB per VM (target ≤ 100: {})",
        idle_kib as f64 / 1024.0,
        if idle_kib <= 15 * 1024 { "met" } else { "MISSED" },
        before_kib as f64 / 1024.0,
        busy_kib as f64 / 1024.0,
        if per_vm <= 100.0 { "met" } else { "MISSED" }
    );
    std::thread::scope(|s| {
        for n in &names {
            let host = &host;
            s.spawn(move || host.ok(&["vm", "stop", n]));
        }
    });
}
