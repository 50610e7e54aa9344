//! `banger doctor` on this real host: what it says about KVM and the VMMs, the fix it prints when
//! firecracker is off PATH, a full state dir, and a daemon that is down, up without a helper, and
//! up with the helper and a kernel.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chaos_tests::guests::GuestHost;
use chaos_tests::{TestDaemon, bin, capable, is_root, stdout};
use serde_json::Value;

/// Every check `doctor` runs, in its order.
const CHECKS: [&str; 11] = [
    "kvm",
    "firecracker",
    "qemu",
    "daemon",
    "helper",
    "kernel",
    "cgroup",
    "network",
    "disk",
    "units",
    "defaults",
];

/// `banger --state-dir DIR doctor ARGS…`, with `path` as its PATH when given.
fn doctor(state_dir: &Path, args: &[&str], path: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("banger"));
    cmd.arg("--state-dir").arg(state_dir).arg("doctor").args(args);
    cmd.env("NO_COLOR", "1").env_remove("BANGER_SOCKET").env_remove("BANGER_STATE_DIR").stdin(Stdio::null());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", stdout(o)))
}

fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check"))
}

/// The text line of check `name` and the fix line under it, if any.
fn text_check(out: &str, name: &str) -> (String, Option<String>) {
    let mut lines = out.lines();
    let line = lines
        .by_ref()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"));
    let fix = lines.next().filter(|l| l.trim_start().starts_with("fix:")).map(str::to_string);
    (line.to_string(), fix)
}

#[test]
fn reports_this_hosts_kvm_and_lists_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = doctor(dir.path(), &["--json"], None);
    let doc = json(&out);
    let names: BTreeSet<&str> =
        doc["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS.into_iter().collect(), "{doc:#}");
    for c in doc["checks"].as_array().unwrap() {
        assert!(["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()), "{c}");
        assert!(!c["finding"].as_str().unwrap().is_empty(), "{c}");
        assert_eq!(c["fix"].is_null(), c["status"] == "ok", "a warning or failure has a fix: {c}");
    }
    // The spec line's VMM is the daemon's rule: QEMU unless KVM is hardware.
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let hardware = Path::new("/dev/kvm").exists() && !pvm;
    assert_eq!(doc["spec"]["vmm"], if hardware { "Firecracker" } else { "Qemu" }, "{doc:#}");
    assert_eq!(doc["spec"]["hardware_kvm"], hardware);
    let cpus = std::thread::available_parallelism().unwrap().get().min(2);
    assert_eq!(doc["spec"]["cpus"], cpus);
    assert_eq!(doc["spec"]["disk_bytes"], 8u64 << 30);
    if !capable("kvm", pvm, "this host's KVM is not the software-only kvm_pvm") {
        return;
    }
    let kvm = check(&doc, "kvm");
    assert_eq!(kvm["status"], "warn", "{kvm}");
    assert!(kvm["finding"].as_str().unwrap().contains("software-only KVM (kvm_pvm)"), "{kvm}");
    assert!(kvm["fix"].as_str().unwrap().contains("--vmm qemu"), "{kvm}");
    // The same, as a person reads it.
    let text = stdout(&doctor(dir.path(), &[], None));
    let (line, fix) = text_check(&text, "kvm");
    assert!(line.starts_with("warn") && line.contains("QEMU (TCG) works"), "{text}");
    assert!(fix.unwrap().contains("banger vm create --vmm qemu"), "{text}");
    let (defaults, _) = text_check(&text, "defaults");
    assert!(defaults.contains(&format!("{cpus} vCPU")) && defaults.contains("vmm qemu (TCG)"), "{text}");
}

#[test]
fn firecracker_off_path_fails_with_the_fix() {
    let Some(fc) = which("firecracker") else {
        capable("firecracker", false, "firecracker is not on PATH (scripts/install-firecracker)");
        return;
    };
    let fc_dir = fc.parent().unwrap().to_path_buf();
    let path = std::env::var("PATH").unwrap();
    let without: Vec<PathBuf> = std::env::split_paths(&path).filter(|d| *d != fc_dir).collect();
    let without = std::env::join_paths(without).unwrap().into_string().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = doctor(dir.path(), &[], Some(&without));
    let text = stdout(&out);
    let (line, fix) = text_check(&text, "firecracker");
    assert!(line.starts_with("fail") && line.contains("firecracker and jailer not found on PATH"), "{text}");
    assert!(fix.unwrap().contains("scripts/install-firecracker"), "{text}");
    let doc = json(&doctor(dir.path(), &["--json"], Some(&without)));
    assert_eq!(check(&doc, "firecracker")["status"], "fail");
    // QEMU still runs VMs here: a missing Firecracker alone does not block.
    if which("qemu-system-x86_64").is_some() {
        assert_eq!(check(&doc, "firecracker")["blocking"], false, "{doc:#}");
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A tmpfs mounted on a temporary dir, unmounted (and the dir removed) when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("banger-doctor-").tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.path().display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_state_dir_warns() {
    if !capable("root", is_root(), "mounting a tmpfs needs root") {
        return;
    }
    let fs = Tmpfs::mount("4m");
    // Fill it: one file to the last byte.
    let mut f = std::fs::File::create(fs.0.path().join("fill")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let doc = json(&doctor(fs.0.path(), &["--json"], None));
    let disk = check(&doc, "disk");
    assert_eq!(disk["status"], "warn", "{disk}");
    let finding = disk["finding"].as_str().unwrap();
    assert!(finding.contains(&fs.0.path().display().to_string()) && finding.contains("0 B free"), "{disk}");
    assert!(disk["fix"].as_str().unwrap().contains("banger image cache prune"), "{disk}");
    // A warning alone never blocks.
    assert_eq!(disk["blocking"], false);
}

#[test]
fn no_daemon_fails_with_daemon_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = doctor(dir.path(), &[], None);
    assert!(!out.status.success(), "exit status with no daemon: {:?}", out.status);
    let text = stdout(&out);
    let (line, fix) = text_check(&text, "daemon");
    assert!(line.starts_with("fail") && line.contains("bangerd is not running"), "{text}");
    assert!(fix.unwrap().contains("banger daemon start"), "{text}");
    // The host checks ran all the same.
    for name in ["kvm", "qemu", "cgroup", "disk", "defaults"] {
        text_check(&text, name);
    }
    let out = doctor(dir.path(), &["--json"], None);
    assert!(!out.status.success());
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    assert_eq!(check(&doc, "daemon")["fix"], "start it with `banger daemon start`");
    assert_eq!(check(&doc, "daemon")["blocking"], true);
}

#[tokio::test]
async fn a_daemon_without_helper_or_kernel_blocks() {
    let d = TestDaemon::start().await;
    let out = doctor(d.dir.path(), &["--json"], None);
    assert!(!out.status.success());
    let doc = json(&out);
    assert_eq!(check(&doc, "daemon")["status"], "ok", "{doc:#}");
    let helper = check(&doc, "helper");
    assert_eq!(helper["status"], "fail", "{helper}");
    assert!(helper["finding"].as_str().unwrap().contains("no helper configured"), "{helper}");
    let kernel = check(&doc, "kernel");
    assert_eq!(kernel["status"], "fail", "{kernel}");
    assert!(kernel["fix"].as_str().unwrap().contains("banger kernel import"), "{kernel}");
    assert_eq!(doc["spec"]["kernel_present"], false);
}

#[tokio::test]
async fn a_daemon_with_its_helper_and_kernel_is_ready() {
    let Some(g) = GuestHost::start().await else { return };
    let dir = g.host.daemon.dir.path();
    let out = doctor(dir, &["--json"], None);
    let doc = json(&out);
    for name in ["daemon", "helper", "kernel"] {
        assert_eq!(check(&doc, name)["status"], "ok", "{name}: {doc:#}");
    }
    assert!(
        check(&doc, "helper")["finding"].as_str().unwrap().starts_with("connected to banger-helper"),
        "{doc:#}"
    );
    assert_eq!(doc["spec"]["kernel_present"], true);
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert!(out.status.success());
    // The bridge the daemon reports is the one checked (made by the first networked VM).
    let network = check(&doc, "network")["finding"].as_str().unwrap().to_string();
    assert!(network.contains(&g.host.bridge), "{network}");
    // A networked VM makes the bridge and its NAT table: both are seen.
    let out = g.cli(&[
        "vm", "run", "--rm", "--vmm", "qemu", "--cpus", "1", "--memory", "256", "busybox", "--", "true",
    ]);
    assert!(out.status.success(), "a networked vm run: {}", chaos_tests::stderr(&out));
    let bridge = &g.host.bridge;
    let doc = json(&doctor(dir, &["--json"], None));
    let network = check(&doc, "network");
    assert_eq!(network["status"], "ok", "{network}");
    assert!(
        network["finding"].as_str().unwrap().contains(&format!("{bridge} is up with its nftables table")),
        "{network}"
    );
    let text = stdout(&doctor(dir, &[], None));
    eprintln!("banger doctor on this host:\n{text}");
    // Its table gone (the VMs' NAT with it): a warning with the fix, nothing blocked.
    let gone = Command::new("nft").args(["delete", "table", "ip", bridge]).status().unwrap();
    assert!(gone.success());
    let out = doctor(dir, &["--json"], None);
    let doc = json(&out);
    let network = check(&doc, "network");
    assert_eq!(network["status"], "warn", "{network}");
    assert!(network["fix"].as_str().unwrap().contains("banger daemon restart"), "{network}");
    assert!(out.status.success(), "a warning alone exits 0");
}

/// `banger --state-dir DIR doctor --json` as `uid:gid` (no supplementary groups).
fn doctor_as(state_dir: &Path, uid: u32, gid: u32) -> Value {
    use std::os::unix::process::CommandExt;
    let out = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(["doctor", "--json"])
        .env("NO_COLOR", "1")
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    json(&out)
}

#[tokio::test]
async fn a_user_outside_the_sockets_group_is_told_how_to_join() {
    if !capable("root", is_root(), "running doctor as other users needs root") {
        return;
    }
    let (uid, gid) = chaos_tests::other_user();
    let opts = chaos_tests::DaemonOpts {
        extra_args: vec!["--group".into(), "banger-test-other".into()],
        ..Default::default()
    };
    let d = TestDaemon::start_with(opts).await;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a nobody user");
    let doc = doctor_as(d.dir.path(), nobody.uid.as_raw(), nobody.gid.as_raw());
    let daemon = check(&doc, "daemon");
    assert_eq!(daemon["status"], "fail", "{daemon}");
    let finding = daemon["finding"].as_str().unwrap();
    assert!(
        finding.contains("socket 0660 root:banger-test-other") && finding.contains("nor in its group"),
        "{daemon}"
    );
    assert!(daemon["fix"].as_str().unwrap().contains("sudo usermod -aG banger-test-other $USER"), "{daemon}");
    assert_eq!(doc["ok"], false);
    // A member gets in.
    let doc = doctor_as(d.dir.path(), uid, gid);
    assert_eq!(check(&doc, "daemon")["status"], "ok", "{doc:#}");
}

#[tokio::test]
async fn a_daemon_that_never_answers_is_reported_not_waited_for() {
    // A socket that takes connections (the kernel's backlog) and never says a word.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let _silent = tokio_seqpacket::UnixSeqpacketListener::bind(dir.path().join("run/bangerd.sock")).unwrap();
    let started = std::time::Instant::now();
    let state = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || doctor(&state, &["--json"], None)).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "doctor waited {:?}", started.elapsed());
    assert!(!out.status.success());
    let doc = json(&out);
    let daemon = check(&doc, "daemon");
    assert_eq!(daemon["status"], "fail", "{daemon}");
    assert!(daemon["finding"].as_str().unwrap().contains("did not answer within"), "{daemon}");
    assert!(daemon["fix"].as_str().unwrap().contains("banger daemon restart"), "{daemon}");
}
