//! Workspace benchmarks through QEMU with the Debian image (git in the guest), on a generated
//! checkout of 10,000 files and 200 MiB (committed, text-like so git compresses it as it would
//! source code):
//! - `vm workspace copy` against `git archive HEAD | banger vm exec -i VM -- tar x -C /ref` on
//!   the same VM (the copy also carries .git; target ratio copy / archive ≤ 1.0);
//! - `vm workspace sync` after touching 10 files (target ≤ 1 s).
//!
//! Run: `scripts/dev bench` (as root, with QEMU, the kernel and the Debian image).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench harness: a panic is the failure report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::bench::{guest_host, verdict};

const FILES: usize = 10_000;
const TOTAL_MIB: usize = 200;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// 10,000 files in 100 directories, 200 MiB of lines that vary (so nothing dedupes), committed.
fn checkout(top: &Path) {
    let per_file = TOTAL_MIB * (1 << 20) / FILES;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..FILES {
        let dir = top.join(format!("mod{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::with_capacity(per_file + 100);
        while text.len() < per_file {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(&format!("    let value_{:x} = compute({}, \"{:016x}\");\n", seed % 4096, i, seed));
        }
        std::fs::write(dir.join(format!("file{i:05}.rs")), text).unwrap();
    }
    git(top, &["init", "-q"]);
    git(top, &["add", "-A"]);
    git(top, &["commit", "-qm", "generated"]);
}

fn main() {
    let Some((_rt, g)) = guest_host("workspace") else { return };
    if g.import_debian().is_none() {
        eprintln!("workspace benches skipped (see above)");
        return;
    }
    let repo = tempfile::tempdir().unwrap();
    let top = repo.path();
    let t = Instant::now();
    checkout(top);
    eprintln!("generated the checkout in {:.1} s", t.elapsed().as_secs_f64());
    g.ok(&[
        "vm", "run", "-d", "--name", "wsbench", "--vmm", "qemu", "--cpus", "1", "--memory", "512", "--disk",
        "4G", "--no-net", "debian",
    ]);
    let top_s = top.to_str().unwrap();

    // The reference first, so the guest's page cache is as warm for both.
    g.ok(&["vm", "exec", "wsbench", "--", "mkdir", "-p", "/ref"]);
    let t = Instant::now();
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(top)
        .args(["archive", "HEAD"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = g
        .command(&["vm", "exec", "-i", "wsbench", "--", "tar", "x", "-C", "/ref"])
        .stdin(archive.stdout.take().unwrap())
        .output()
        .unwrap();
    let reference = t.elapsed();
    assert!(archive.wait().unwrap().success());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let t = Instant::now();
    let copied = g.ok(&["vm", "workspace", "copy", "wsbench", top_s]);
    let copy = t.elapsed();
    let count = g.ok(&[
        "vm",
        "exec",
        "wsbench",
        "--",
        "sh",
        "-c",
        "find /workspace -path /workspace/.git -prune -o -type f -print | wc -l",
    ]);
    assert_eq!(count.trim(), FILES.to_string(), "every file arrived");

    // Touch 10 files (a line each), then sync.
    for i in (0..FILES).step_by(FILES / 10) {
        let path = top.join(format!("mod{:03}/file{i:05}.rs", i % 100));
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "// touched").unwrap();
    }
    let t = Instant::now();
    let synced = g.ok(&["vm", "workspace", "sync", "wsbench"]);
    let sync = t.elapsed();
    assert!(synced.contains("10 modified"), "{synced}");
    let t = Instant::now();
    let out = g.cli(&["vm", "exec", "wsbench", "--", "true"]);
    let exec_check = t.elapsed();
    assert!(out.status.success());

    let ratio = copy.as_secs_f64() / reference.as_secs_f64();
    let s = |d: Duration| d.as_secs_f64();
    println!("workspace of {FILES} files, {TOTAL_MIB} MiB (committed) on QEMU:");
    println!("  {}", copied.trim());
    println!("  vm workspace copy (files + .git)            {:>7.2} s", s(copy));
    println!("  git archive HEAD | vm exec -i -- tar x      {:>7.2} s", s(reference));
    println!("  ratio {ratio:.2} (target ≤ 1.0: {})", verdict(ratio <= 1.0));
    println!(
        "  vm workspace sync after touching 10 files   {:>7.2} s (target ≤ 1: {})",
        s(sync),
        verdict(s(sync) <= 1.0)
    );
    println!("  vm exec -- true with the workspace check    {:>7.2} s", s(exec_check));
    g.ok(&["vm", "rm", "-f", "wsbench"]);
}
