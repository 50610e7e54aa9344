//! Image benchmarks, each printed beside a reference measured in the same run:
//! - pull + flatten + ext4 of a ~100 MB, 4-layer image from a local registry, against
//!   `skopeo copy` + `umoci unpack` + `mkfs.ext4 -d` of the same image (target ratio ≤ 1.0);
//! - `image cache prune` of 10,000 blobs, dry-run and real (target < 1 s each);
//! - bangerd's peak RSS while pulling a 500 MB layer (target < 64 MiB).
//!
//! Run: `scripts/dev bench` (release binaries; needs docker-registry, skopeo, umoci, e2fsprogs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench harness: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::registry::TestRegistry;
use chaos_tests::{TestDaemon, banger, noise};

const ROUNDS: usize = 3;

/// Four layers of ~30 MB each: many small text files (they compress) and six 4 MiB binary ones
/// (they do not), so the blobs add up to ~100 MB.
fn layers() -> Vec<Vec<u8>> {
    (0..4u64)
        .map(|l| {
            let mut t = LayerTar::default().dir(&format!("l{l}"));
            for f in 0..600 {
                let text = format!("layer {l} file {f}\n").repeat(1000 + (f % 7) * 100);
                t = t.file(&format!("l{l}/text{f}.txt"), text.as_bytes());
            }
            for f in 0..6 {
                t = t.file(&format!("l{l}/blob{f}.bin"), &noise(4 << 20, l * 10 + f));
            }
            t.bytes()
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn pull_vs_reference(reg: &TestRegistry) {
    let image = oci::image(&layers(), Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    let blob_bytes: usize = image.blobs.iter().map(|(_, b)| b.len()).sum();
    oci::push(&reg.addr, "bench/app", Some("v1"), &image).await;
    let reference = format!("{}/bench/app:v1", reg.addr);
    let (mut ours, mut theirs) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let d = TestDaemon::start().await;
        let t = Instant::now();
        let out = d.cli(&["image", "pull", &reference, "--name", "app"]);
        ours.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let size = std::fs::metadata(d.dir.path().join("images/app/rootfs.ext4")).unwrap().len();

        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("layout");
        let bundle = work.path().join("bundle");
        let ext4 = work.path().join("rootfs.ext4");
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", layout.display())));
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle));
        std::fs::File::create(&ext4).unwrap().set_len(size).unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(bundle.join("rootfs")).arg(&ext4));
        theirs.push(t.elapsed());
    }
    let (o, r) = (median(ours), median(theirs));
    println!("pull+flatten+ext4, {:.0} MB of blobs, 4 layers, median of {ROUNDS}:", blob_bytes as f64 / 1e6);
    println!("  banger image pull                      {:>8.0} ms", o.as_secs_f64() * 1e3);
    println!("  skopeo copy + umoci unpack + mkfs.ext4 {:>8.0} ms", r.as_secs_f64() * 1e3);
    let ratio = o.as_secs_f64() / r.as_secs_f64();
    println!(
        "  ratio banger/reference: {ratio:.2} (target ≤ 1.0: {})",
        if ratio <= 1.0 { "met" } else { "MISSED" }
    );
}

async fn prune_10k() {
    let d = TestDaemon::start().await;
    let cache = d.dir.path().join("cache/oci/blobs/sha256");
    std::fs::create_dir_all(&cache).unwrap();
    for i in 0..10_000u32 {
        std::fs::write(cache.join(format!("{i:064x}")), i.to_le_bytes().repeat(256)).unwrap();
    }
    for (label, args) in
        [("dry-run", vec!["image", "cache", "prune", "--dry-run"]), ("real", vec!["image", "cache", "prune"])]
    {
        let t = Instant::now();
        let out = banger(d.dir.path(), &args);
        let took = t.elapsed();
        assert!(out.status.success());
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("across 10000 blob(s)"), "{said}");
        println!(
            "prune of 10,000 blobs, {label:<7}: {:>6.0} ms whole command (target < 1000 ms: {})",
            took.as_secs_f64() * 1e3,
            if took < Duration::from_secs(1) { "met" } else { "MISSED" }
        );
    }
}

async fn rss_during_big_pull(reg: &TestRegistry) {
    let layer = LayerTar::default().file("big.bin", &noise(500 << 20, 42)).bytes();
    let image = oci::image(&[layer], Compression::None, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "bench/big", Some("v1"), &image).await;
    drop(image);
    let d = TestDaemon::start().await;
    let t = Instant::now();
    let out = d.cli(&["image", "pull", &format!("{}/bench/big:v1", reg.addr)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let mib = hwm_kib as f64 / 1024.0;
    println!(
        "peak RSS of bangerd pulling a 500 MiB layer: {mib:.1} MiB in {:.1} s (target < 64 MiB: {})",
        t.elapsed().as_secs_f64(),
        if mib < 64.0 { "met" } else { "MISSED" }
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("image benches: run with `cargo bench -p chaos-tests` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let reg = TestRegistry::start();
        pull_vs_reference(&reg).await;
        prune_10k().await;
        rss_during_big_pull(&reg).await;
    });
}
