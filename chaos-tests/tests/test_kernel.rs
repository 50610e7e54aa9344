//! The test kernel itself, under a bare Firecracker: it boots, prints its marker, and either
//! resets at once or waits (costing no CPU) for Ctrl-Alt-Del.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::{TEST_KERNEL, capable, firecracker};

fn config(dir: &std::path::Path, mode: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{mode}.json"));
    // Firecracker's own log goes to a file: on stdout its lines interleave byte-wise with the
    // serial console and can split the marker.
    let log = dir.join(format!("{mode}-firecracker.log"));
    std::fs::write(&log, "").unwrap();
    let json = serde_json::json!({
        "boot-source": { "kernel_image_path": TEST_KERNEL, "boot_args": format!("console=ttyS0 banger.mode={mode}") },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 32 },
        "logger": { "log_path": log, "level": "Info" },
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn the_test_kernel_boots_and_resets_or_waits_for_ctrl_alt_del() {
    let Some(fc) = firecracker() else {
        capable("kvm", false, "firecracker or /dev/kvm is missing (scripts/dev setup installs Firecracker)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = Command::new(&fc)
        .args(["--no-api", "--config-file"])
        .arg(config(dir.path(), "reset"))
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BANGER-TEST-KERNEL booted"));
    eprintln!("reset mode: booted and exited in {took:?}");

    let api = dir.path().join("api.sock");
    let log = std::fs::File::create(dir.path().join("wait.log")).unwrap();
    let mut child = Command::new(&fc)
        .arg("--api-sock")
        .arg(&api)
        .arg("--config-file")
        .arg(config(dir.path(), "wait"))
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(dir.path().join("wait.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_log().contains("waiting for ctrl-alt-del") {
        assert!(Instant::now() < deadline, "never waited: {}", read_log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_millis(500));
    let idle = cpu_ticks(child.id()) - before;
    assert!(idle <= 5, "a waiting test VM sleeps ({idle} ticks of CPU in 0.5 s)");
    assert!(child.try_wait().unwrap().is_none(), "it waits instead of exiting");

    let mut s = UnixStream::connect(&api).unwrap();
    let body = r#"{"action_type":"SendCtrlAltDel"}"#;
    write!(s, "PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reply = [0u8; 64];
    let n = s.read(&mut reply).unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&reply[..n])
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "a graceful reset exits 0: {status}");
    assert!(read_log().contains("got ctrl-alt-del, resetting"), "{}", read_log());
}
