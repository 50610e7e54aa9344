//! Guest benchmarks through QEMU TCG with Debian's cloud kernel, each beside a reference in the
//! same run:
//! - `vm run IMAGE -- true` cold, median of 5, with its phases (from `--timings`), against a
//!   bare `qemu-system-x86_64` booting the same kernel with the same modules to a marker that
//!   its /init prints (target ≤ 3.5 s, ratio ≤ 1.3, the daemon's own share ≤ 100 ms);
//! - `vm exec NAME -- true` into a running VM, p50/p99 of 100, beside the agent channel's bare
//!   round trip (`VmPing`) and the same exec sent by a client already connected (target: the
//!   part outside the guest ≤ 5 ms);
//! - `vm cp` of a 256 MiB file in and out, against `tar c | banger vm exec -i NAME -- tar x`
//!   (and `tar c` out) over the same VM (target ratio ≥ 1);
//! - the agent's RSS in the guest (target ≤ 5 MiB) and the initrd's size.
//!
//! Run: `scripts/dev bench` (as root, with QEMU and the kernel scripts/dev fetches).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench harness: a panic is the failure report

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::bench::{guest_host, ms, percentile, verdict};
use chaos_tests::guests::{GuestHost, QEMU};
use chaos_tests::protocol::daemon::{Request, Response};
use chaos_tests::protocol::exec::{ExecEvent, ExecSpec};

const COLD_RUNS: usize = 5;
const EXECS: usize = 100;
const COPY_MIB: usize = 256;

/// A `--timings` line's milliseconds: `  name   123.4 ms`.
fn phase(timings: &str, name: &str) -> Option<f64> {
    let line = timings.lines().find(|l| l.trim_start().starts_with(name))?;
    line[name.len() + line.find(name)?..].split_whitespace().next()?.parse().ok()
}

fn main() {
    let Some((rt, g)) = guest_host("guest") else { return };
    let vm = ["--vmm", "qemu", "--cpus", "1", "--memory", "256", "--no-net"];
    cold_runs(&g, &vm);
    let mut args = vec!["vm", "run", "-d", "--name", "bench", "--memory", "512"];
    args.extend(&vm[..4]);
    args.extend(["--no-net", "busybox"]);
    g.ok(&args);
    rt.block_on(execs(&g));
    copies(&g);
    memory(&g);
    g.ok(&["vm", "rm", "-f", "bench"]);
}

/// The reference: the same kernel and modules, an /init that prints a marker and powers off,
/// booted by a bare QEMU with banger's machine and command line; timed from exec to the marker.
fn bare_boot(g: &GuestHost) -> Duration {
    let state = g.host.daemon.dir.path();
    let dir = tempfile::tempdir().unwrap();
    let init_dir = dir.path().join("init");
    std::fs::create_dir_all(init_dir.join("bin")).unwrap();
    let busybox = chaos_tests::guests::busybox().unwrap();
    std::fs::copy(&busybox, init_dir.join("bin/busybox")).unwrap();
    std::fs::write(
        init_dir.join("init"),
        "#!/bin/busybox sh\necho BARE-INIT-MARKER\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    Command::new("chmod").args(["755"]).arg(init_dir.join("init")).status().unwrap();
    let mut cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet")
        .current_dir(&init_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut init_cpio = Vec::new();
    std::io::Read::read_to_end(cpio.stdout.as_mut().unwrap(), &mut init_cpio).unwrap();
    assert!(cpio.wait().unwrap().success());
    let mut initrd = std::fs::read(state.join("kernels/default/modules.cpio")).unwrap();
    initrd.extend(init_cpio);
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&initrd_path, initrd).unwrap();
    let kernel = state.join("kernels/default/bzImage");
    let cmdline = "console=ttyS0 reboot=k panic=1 pci=off quiet tsc_early_khz=2000000 lpj=8000000";
    let t = Instant::now();
    let mut qemu = Command::new(QEMU)
        .args(["-M", "microvm,rtc=on", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd_path)
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(qemu.stdout.take().unwrap()).lines();
    let took = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("BARE-INIT-MARKER") => break t.elapsed(),
            Some(_) => continue,
            None => panic!("the bare boot ended without its marker"),
        }
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    took
}

fn cold_runs(g: &GuestHost, vm: &[&str]) {
    let (mut ours, mut bare) = (vec![], vec![]);
    let mut shares = vec![];
    let mut last = String::new();
    for i in 0..COLD_RUNS {
        bare.push(bare_boot(g));
        let name = format!("cold{i}");
        let mut args = vec!["vm", "run", "--timings", "--name", &name];
        args.extend(vm);
        args.extend(["busybox", "--", "true"]);
        let t = Instant::now();
        let out = g.cli(&args);
        ours.push(t.elapsed());
        // Removing it is not part of running the command.
        g.ok(&["vm", "rm", "-f", &name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // The daemon's own share: creating the VM, and its part of the start (asking the helper,
        // which launches QEMU); the rest of "outside the guest" is QEMU starting and loading the
        // kernel, which the reference pays too.
        shares.push(phase(&last, "create (disk)").unwrap_or(0.0) + phase(&last, "VMM start").unwrap_or(0.0));
    }
    let (o, b) = (percentile(&mut ours, 0.5), percentile(&mut bare, 0.5));
    shares.sort_by(f64::total_cmp);
    let share = shares[shares.len() / 2];
    let ratio = o.as_secs_f64() / b.as_secs_f64();
    println!("cold `vm run busybox -- true` on QEMU TCG, median of {COLD_RUNS}, interleaved:");
    println!(
        "  banger vm run                         {:>8.0} ms (target ≤ 3500: {})",
        ms(o),
        verdict(ms(o) <= 3500.0)
    );
    println!("  bare qemu to a marker from /init      {:>8.0} ms", ms(b));
    println!("  ratio {ratio:.2} (target ≤ 1.3: {})", verdict(ratio <= 1.3));
    println!(
        "  the daemon's share (create + VMM start) {share:.0} ms (target ≤ 100: {})",
        verdict(share <= 100.0)
    );
    println!("  the last run's phases:");
    for l in last.lines().skip_while(|l| !l.starts_with("timings:")).skip(1) {
        println!("    {}", l.trim_start());
    }
}

async fn execs(g: &GuestHost) {
    let mut client = g.host.daemon.client().await;
    let spec =
        ExecSpec { argv: vec!["true".into()], env: vec![], cwd: None, user: None, tty: None, stdin: false };
    let (mut ping, mut direct, mut cli) = (vec![], vec![], vec![]);
    for _ in 0..EXECS {
        let t = Instant::now();
        match client.call(&Request::VmPing { name: "bench".into() }).await.unwrap() {
            Response::Pong => ping.push(t.elapsed()),
            other => panic!("{other:?}"),
        }
        // One exec, its whole stream, on a connection already open.
        let t = Instant::now();
        client.send(&Request::VmExec { name: "bench".into(), spec: spec.clone() }).await.unwrap();
        loop {
            match client.next().await.unwrap().unwrap().0 {
                Response::Exec(ExecEvent::Exited(s)) => {
                    assert_eq!(s.code(), 0);
                    break;
                }
                Response::Exec(_) => continue,
                other => panic!("{other:?}"),
            }
        }
        direct.push(t.elapsed());
        let t = Instant::now();
        let out = g.cli(&["vm", "exec", "bench", "--", "true"]);
        cli.push(t.elapsed());
        assert!(out.status.success());
    }
    let p = |v: &mut Vec<Duration>| (ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
    let ((p50, p99), (d50, d99), (c50, c99)) = (p(&mut ping), p(&mut direct), p(&mut cli));
    // Outside the guest: the channel's round trip (daemon, QEMU's chardev, the virtio port),
    // plus what `banger` adds as a process (start, connect, handshake).
    let outside = p50 + (c50 - d50).max(0.0);
    println!("`vm exec bench -- true`, {EXECS} runs (p50 / p99):");
    println!("  banger vm exec (a new process each)   {c50:>7.1} / {c99:.1} ms");
    println!("  VmExec on an open connection          {d50:>7.1} / {d99:.1} ms");
    println!("  agent round trip (VmPing)             {p50:>7.1} / {p99:.1} ms");
    println!(
        "  outside the guest: {outside:.1} ms (ping {p50:.1} + the CLI process {:.1}; target ≤ 5: {}); in the guest (fork, exec, wait of `true` under TCG): {:.1} ms",
        (c50 - d50).max(0.0),
        verdict(outside <= 5.0),
        d50 - p50
    );
}

fn copies(g: &GuestHost) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    let mut f = std::fs::File::create(&file).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..COPY_MIB {
        // Not all zeros, so nothing along the way can shortcut it.
        block.iter_mut().enumerate().for_each(|(j, b)| *b = (i * 31 + j * 7) as u8);
        f.write_all(&block).unwrap();
    }
    drop(f);
    g.ok(&["vm", "exec", "bench", "--", "mkdir", "-p", "/srv/cp", "/srv/tar"]);
    let rate = |d: Duration| COPY_MIB as f64 / d.as_secs_f64();
    let t = Instant::now();
    g.ok(&["vm", "cp", file.to_str().unwrap(), "bench:/srv/cp"]);
    let cp_in = t.elapsed();
    let t = Instant::now();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["-c", "big"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = g
        .command(&["vm", "exec", "-i", "bench", "--", "tar", "-x", "-C", "/srv/tar"])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    let tar_in = t.elapsed();
    assert!(tar.wait().unwrap().success());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = tempfile::tempdir().unwrap();
    let t = Instant::now();
    g.ok(&["vm", "cp", "bench:/srv/cp/big", back.path().to_str().unwrap()]);
    let cp_out = t.elapsed();
    assert_eq!(std::fs::metadata(back.path().join("big")).unwrap().len(), (COPY_MIB << 20) as u64);
    let t = Instant::now();
    let mut exec = g
        .command(&["vm", "exec", "bench", "--", "tar", "-c", "-C", "/srv/tar", "big"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let untar = Command::new("tar")
        .arg("-C")
        .arg(back.path())
        .args(["-x", "--transform", "s/big/big2/"])
        .stdin(exec.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(exec.wait().unwrap().success() && untar.success());
    let tar_out = t.elapsed();
    println!("copying {COPY_MIB} MiB (MiB/s):");
    println!(
        "  in:  vm cp {:.1}, tar | vm exec -i tar x {:.1}: ratio {:.2} (target ≥ 1: {})",
        rate(cp_in),
        rate(tar_in),
        tar_in.as_secs_f64() / cp_in.as_secs_f64(),
        verdict(tar_in >= cp_in.mul_f64(0.95))
    );
    println!(
        "  out: vm cp {:.1}, vm exec tar c | tar x {:.1}: ratio {:.2} (target ≥ 1: {})",
        rate(cp_out),
        rate(tar_out),
        tar_out.as_secs_f64() / cp_out.as_secs_f64(),
        verdict(tar_out >= cp_out.mul_f64(0.95))
    );
}

fn memory(g: &GuestHost) {
    // PID 1, and the agent's server (the parent of this very exec).
    let out =
        g.ok(&["vm", "exec", "bench", "--", "sh", "-c", "grep VmRSS /proc/1/status /proc/$PPID/status"]);
    let kib: Vec<u64> = out.lines().filter_map(|l| l.split_whitespace().rev().nth(1)?.parse().ok()).collect();
    let total: u64 = kib.iter().sum();
    let initrd = std::fs::metadata(g.host.daemon.dir.path().join("vms/bench/initrd")).unwrap().len();
    let agent = std::fs::metadata(chaos_tests::bin("banger-agent")).unwrap().len();
    println!(
        "agent RSS in the guest: PID 1 {} KiB + server {} KiB = {:.1} MiB (target ≤ 5: {}); agent binary {:.2} MiB; initrd {:.2} MiB",
        kib.first().unwrap_or(&0),
        kib.get(1).unwrap_or(&0),
        total as f64 / 1024.0,
        verdict(total <= 5 * 1024),
        agent as f64 / (1 << 20) as f64,
        initrd as f64 / (1 << 20) as f64
    );
}
