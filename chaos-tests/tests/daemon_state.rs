//! The daemon's state against corruption, restarts and a peer that is down, on real
//! Firecracker through the real daemon and helper: a garbage `network.json`, a garbage VM record,
//! a restart that must move no address, a VM manager that is restarting, `vm logs -f` fed as the
//! guest writes, and two daemons on one host that never touch each other's network.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chaos_tests::protocol::daemon::{ChaosAction, Request, Response};
use chaos_tests::vms::{Net, VmHost};
use chaos_tests::{TestDaemon, stderr};

fn ip_of(host: &VmHost, name: &str) -> String {
    host.inspect(name)["spec"]["ip"].as_str().unwrap_or_else(|| panic!("{name} has an address")).to_string()
}

fn network_detail(status: &chaos_tests::protocol::daemon::StatusReport) -> String {
    let net = status.root.children.iter().find(|c| c.name == "network").unwrap();
    net.detail.clone().unwrap_or_default()
}

/// Stops the daemon cleanly (as `banger daemon stop` would) and waits for it to exit.
async fn stop(d: &mut TestDaemon) {
    assert_eq!(d.call(&Request::Shutdown).await, Response::Ok);
    d.wait_exit(Duration::from_secs(20));
}

#[tokio::test]
async fn a_garbage_network_json_loses_no_lease() {
    let Some(mut host) = VmHost::start().await else { return };
    host.create_networked("one");
    host.create_networked("two");
    let (ip1, ip2) = (ip_of(&host, "one"), ip_of(&host, "two"));
    host.ok(&["vm", "start", "one"]);
    stop(&mut host.daemon).await;
    let file = host.daemon.dir.path().join("network.json");
    std::fs::write(&file, b"\x00garbage{").unwrap();
    host.daemon.restart().await;

    host.create_networked("three");
    let ip3 = ip_of(&host, "three");
    assert!(ip3 != ip1 && ip3 != ip2, "a new VM gets a free address: {ip3} vs {ip1}, {ip2}");
    assert_eq!((ip_of(&host, "one"), ip_of(&host, "two")), (ip1.clone(), ip2.clone()));
    // The running one keeps it across a stop and start too (its lease was rebuilt).
    host.ok(&["vm", "stop", "one"]);
    host.ok(&["vm", "start", "two"]);
    assert_eq!(ip_of(&host, "two"), ip2, "leased again at start: the same address");
    host.ok(&["vm", "stop", "two"]);
    let aside: Vec<_> = std::fs::read_dir(host.daemon.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("network.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"\x00garbage{");
    let detail = network_detail(&host.daemon.status().await);
    assert!(detail.contains("network.json was unreadable") && detail.contains("rebuilt"), "{detail}");
    let text = String::from_utf8_lossy(&host.cli(&["daemon", "status"]).stdout).into_owned();
    assert!(text.contains("network.json was unreadable"), "daemon status says so: {text}");
}

/// What the actors named `names` say of themselves in `daemon status`.
fn details(status: &chaos_tests::protocol::daemon::StatusReport, names: &[&str]) -> String {
    let of = |c: &&chaos_tests::protocol::daemon::ActorStatus| names.contains(&c.name.as_str());
    status.root.children.iter().filter(of).filter_map(|c| c.detail.clone()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn a_corrupt_vm_record_hides_no_other_vm_and_keeps_its_disk() {
    let Some(mut host) = VmHost::start().await else { return };
    host.create("good", "wait");
    host.create("bad", "wait");
    stop(&mut host.daemon).await;
    let bad = host.daemon.dir.path().join("vms/bad");
    std::fs::write(bad.join("vm.json"), b"{\"info\": 1").unwrap();
    let disk = std::fs::read(bad.join("disk.ext4")).unwrap();
    // The image's and the kernel's metadata too: both stay listed and usable.
    let state = host.daemon.dir.path();
    std::fs::write(state.join("images/base/image.json"), b"[1, 2").unwrap();
    std::fs::write(state.join("kernels/default/kernel.json"), b"").unwrap();
    host.daemon.restart().await;
    assert!(host.ok(&["image", "ls"]).contains("base"));
    assert!(host.ok(&["kernel", "ls"]).contains("default"));
    let said = details(&host.daemon.status().await, &["vms", "images", "kernels"]);
    for what in
        ["bad is damaged", "image base: image.json is corrupt", "kernel default: kernel.json was unreadable"]
    {
        assert!(said.contains(what), "daemon status says {what:?}: {said}");
    }

    let ls = host.ok(&["vm", "ls", "--all"]);
    assert!(ls.contains("good") && ls.lines().any(|l| l.starts_with("bad") && l.contains("damaged")), "{ls}");
    host.ok(&["vm", "start", "good"]);
    host.ok(&["vm", "stop", "good"]);
    let out = host.cli(&["vm", "create", "bad", "--image", "base", "--no-net"]);
    assert_eq!(out.status.code(), Some(4), "its name is taken: {}", stderr(&out));
    let out = host.cli(&["vm", "start", "bad"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("VM bad is damaged; cannot start it"), "{}", stderr(&out));
    assert!(stderr(&out).contains("banger vm rm bad"), "{}", stderr(&out));
    assert_eq!(std::fs::read(bad.join("disk.ext4")).unwrap(), disk, "its disk is untouched");
    host.ok(&["vm", "rm", "bad"]);
    assert!(!bad.exists(), "gone once the user removed it");
}

#[tokio::test]
async fn the_subnet_and_every_address_survive_a_restart() {
    let Some(mut host) = VmHost::start_with(None, Net::DefaultSubnet).await else { return };
    host.create_networked("up");
    host.create_networked("down");
    host.ok(&["vm", "start", "up"]);
    let before = (ip_of(&host, "up"), ip_of(&host, "down"), network_detail(&host.daemon.status().await));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.daemon.dir.path().join("network.json")).unwrap()).unwrap();
    let subnet = saved["subnet"].as_str().unwrap().to_string();
    assert!(before.2.contains(&subnet.replace(".0/", ".1/")), "{} vs {subnet}", before.2);
    // Killed, not stopped: the running VM is re-adopted.
    host.daemon.restart().await;
    let after = (ip_of(&host, "up"), ip_of(&host, "down"), network_detail(&host.daemon.status().await));
    assert_eq!(before, after, "nothing moved");
    host.ok(&["vm", "stop", "up"]);
    host.ok(&["vm", "start", "down"]);
    assert_eq!(ip_of(&host, "down"), before.1);
    assert!(before.1.starts_with(subnet.trim_end_matches("0/24")), "{} in {subnet}", before.1);
    host.ok(&["vm", "stop", "down"]);
}

#[tokio::test]
async fn a_restarting_vm_manager_is_an_error_not_an_empty_answer() {
    let Some(host) = VmHost::start().await else { return };
    host.create("user", "wait");
    // Its next starts fail, so it stays down for a few backoff rounds (0.1 + 0.2 + 0.4 + 0.8 s).
    let fail = ChaosAction::FailStarts { actor: "vms".into(), times: 4 };
    assert_eq!(host.daemon.call(&Request::Chaos(fail)).await, Response::Ok);
    let ls = host.cli(&["vm", "ls", "--all"]);
    assert_eq!(ls.status.code(), Some(6), "{}", stderr(&ls));
    assert!(stderr(&ls).contains("the VM manager is restarting"), "{}", stderr(&ls));
    assert!(stderr(&ls).contains("retry in a moment"), "{}", stderr(&ls));
    let rm = host.cli(&["image", "rm", "base"]);
    assert_eq!(rm.status.code(), Some(6), "not allowed while nobody can say who uses it: {}", stderr(&rm));
    let rm = host.cli(&["kernel", "rm", "default"]);
    assert_eq!(rm.status.code(), Some(6), "{}", stderr(&rm));
    assert!(
        host.daemon.dir.path().join("images/base").exists()
            && host.daemon.dir.path().join("kernels/default").exists()
    );
    // Once it is back, the VM is there, and still keeps its image.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !host.cli(&["vm", "ls", "--all"]).status.success() {
        assert!(Instant::now() < deadline, "the VM manager came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(host.ok(&["vm", "ls", "--all"]).contains("user"));
    assert_eq!(host.cli(&["image", "rm", "base"]).status.code(), Some(4));
}

#[tokio::test]
async fn logs_follow_prints_what_the_guest_writes_within_50_ms() {
    let Some(host) = VmHost::start().await else { return };
    host.create("echo", "echo");
    host.ok(&["vm", "start", "echo"]);
    let mut follower = Command::new(chaos_tests::bin("banger"))
        .arg("--state-dir")
        .arg(host.daemon.dir.path())
        .args(["vm", "logs", "-f", "echo"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, SystemTime::now()));
        }
    });
    let next = |want: &str| loop {
        let (line, at) = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        if line.contains(want) {
            return at;
        }
    };
    next("waiting for ctrl-alt-del");
    let api = host.jail("echo").join("root/api.sock");
    let console = host.daemon.dir.path().join("vms/echo/console.log");
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let sent = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&api)
            .args(["-X", "PUT", "http://localhost/actions", "-d", r#"{"action_type":"SendCtrlAltDel"}"#])
            .status()
            .unwrap();
        assert!(sent.success(), "Firecracker took the key press");
        let seen = next("BANGER-TEST-KERNEL echo");
        // When the VMM wrote it: the log's mtime, set by that write.
        let written = std::fs::metadata(&console).unwrap().modified().unwrap();
        worst = worst.max(seen.duration_since(written).unwrap_or_default());
    }
    eprintln!("vm logs -f: worst of 5 lines {worst:?} after the guest wrote it");
    assert!(
        worst < Duration::from_millis(50),
        "a line reached `vm logs -f` {worst:?} after the guest wrote it"
    );
    host.ok(&["vm", "kill", "echo"]);
    assert!(follower.wait().unwrap().success(), "the follow ends with the VM");
}

/// Links and nft tables whose names start with `prefix`.
fn banger_objects(prefix: &str) -> Vec<String> {
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    let mut all: Vec<String> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .chain(tables.lines().filter_map(|l| l.strip_prefix("table ip ").map(|t| format!("table {t}"))))
        .filter(|n| n.starts_with(prefix) || n.strip_prefix("table ").is_some_and(|t| t.starts_with(prefix)))
        .collect();
    all.sort();
    all
}

/// The taps on `bridge`.
fn taps(bridge: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect()
}

#[tokio::test]
async fn two_daemons_never_touch_each_others_network() {
    let Some(a) = VmHost::start_with(None, Net::DefaultBridge).await else { return };
    let Some(b) = VmHost::start_with(None, Net::DefaultBridge).await else { return };
    assert_ne!(a.bridge, b.bridge, "a bridge per state dir");
    for host in [&a, &b] {
        host.create_networked("web");
        host.ok(&["vm", "start", "web"]);
    }
    let (taps_a, taps_b) = (taps(&a.bridge), taps(&b.bridge));
    assert_eq!((taps_a.len(), taps_b.len()), (1, 1), "{taps_a:?} {taps_b:?}");
    assert_ne!(taps_a, taps_b, "one VM name, two taps");
    let tables = banger_objects("banger");
    for bridge in [&a.bridge, &b.bridge] {
        assert!(tables.contains(&format!("table {bridge}")), "each its own NAT table: {tables:?}");
    }
    // Stopping and uninstalling one leaves the other's VM running on its own bridge and tap.
    a.ok(&["vm", "stop", "web"]);
    a.ok(&["system", "uninstall"]);
    assert!(
        banger_objects(&a.bridge).is_empty(),
        "a's bridge and table are gone: {:?}",
        banger_objects(&a.bridge)
    );
    assert_eq!(taps(&b.bridge), taps_b, "b's tap is still on b's bridge");
    assert_eq!(b.inspect("web")["state"], "Running");
    assert!(banger_objects("banger").contains(&format!("table {}", b.bridge)));
    b.ok(&["vm", "stop", "web"]);
    b.ok(&["system", "uninstall"]);
    assert!(banger_objects(&b.bridge).is_empty());
}
