//! banger-helper's privileged operations, driven directly over its socket as the daemon would:
//! bridge and NAT, taps, Firecracker through the jailer, kill and clean-up; and hostile
//! requests refused with nothing created.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use chaos_tests::protocol::ErrorKind;
use chaos_tests::protocol::channel::{Client, Helper};
use chaos_tests::protocol::helper::{HelperRequest, HelperResponse, LaunchSpec, NetworkSpec};
use chaos_tests::{TEST_KERNEL, TestHelper, capable, firecracker, is_root};

async fn helper(state: &std::path::Path) -> Option<(TestHelper, Client<Helper>)> {
    if !capable("root", is_root(), "banger-helper runs as root") {
        return None;
    }
    let h = TestHelper::start_in(&state.join("run/helper.sock"), 0, state).await;
    let c = Client::<Helper>::connect(&h.socket, "test").await.unwrap();
    Some((h, c))
}

fn ip(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned()
}

fn refused(reply: HelperResponse, kind: ErrorKind, says: &str) {
    match reply {
        HelperResponse::Error(e) => {
            assert_eq!(e.kind, kind, "{e:?}");
            assert!(e.message.contains(says), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn bridge_nat_and_taps_are_created_idempotently_and_removed() {
    let state = tempfile::tempdir().unwrap();
    let Some((_h, mut c)) = helper(state.path()).await else { return };
    let net = NetworkSpec { bridge: "bangerht1".into(), host_cidr: "10.251.7.1/24".into() };
    for _ in 0..2 {
        assert_eq!(c.call(&HelperRequest::EnsureNetwork(net.clone())).await.unwrap(), HelperResponse::Ok);
    }
    assert!(ip(&["addr", "show", "dev", "bangerht1"]).contains("inet 10.251.7.1/24"));
    let rules = String::from_utf8_lossy(
        &Command::new("nft").args(["list", "table", "ip", "bangerht1"]).output().unwrap().stdout,
    )
    .into_owned();
    assert!(rules.contains("ip saddr 10.251.7.0/24 ip daddr != 10.251.7.0/24 masquerade"), "{rules}");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");

    let tap = match c
        .call(&HelperRequest::CreateTap { vm: "web-1".into(), bridge: "bangerht1".into() })
        .await
        .unwrap()
    {
        HelperResponse::Tap { name } => name,
        other => panic!("{other:?}"),
    };
    let shown = ip(&["-d", "link", "show", "dev", &tap]);
    assert!(
        shown.contains("master bangerht1") && shown.contains("tun type tap") && shown.contains("user root"),
        "{shown}"
    );
    assert_eq!(c.call(&HelperRequest::DeleteTap { vm: "web-1".into() }).await.unwrap(), HelperResponse::Ok);
    assert!(ip(&["link", "show", "dev", &tap]).is_empty(), "the tap is gone");
    assert_eq!(
        c.call(&HelperRequest::DeleteTap { vm: "web-1".into() }).await.unwrap(),
        HelperResponse::Ok,
        "absent is fine"
    );

    assert_eq!(c.call(&HelperRequest::RemoveNetwork(net)).await.unwrap(), HelperResponse::Ok);
    assert!(ip(&["link", "show", "dev", "bangerht1"]).is_empty());
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("bangerht1"), "the NAT table is gone");
}

#[tokio::test]
async fn hostile_requests_are_refused_and_create_nothing() {
    let state = tempfile::tempdir().unwrap();
    let Some((_h, mut c)) = helper(state.path()).await else { return };
    for vm in ["../etc", "Web", "a;reboot", "", &"x".repeat(64)] {
        let reply =
            c.call(&HelperRequest::CreateTap { vm: vm.into(), bridge: "banger0".into() }).await.unwrap();
        refused(reply, ErrorKind::InvalidInput, "invalid VM name");
    }
    let reply = c.call(&HelperRequest::CreateTap { vm: "ok".into(), bridge: "eth0".into() }).await.unwrap();
    refused(reply, ErrorKind::InvalidInput, "invalid bridge name");
    let reply = c
        .call(&HelperRequest::EnsureNetwork(NetworkSpec {
            bridge: "banger9".into(),
            host_cidr: "8.8.8.1/24".into(),
        }))
        .await
        .unwrap();
    refused(reply, ErrorKind::InvalidInput, "must be private");
    // (Other tests make interfaces at the same time, so look for these requests' own.)
    assert!(ip(&["link", "show", "dev", "banger9"]).is_empty(), "no bridge was created");

    std::fs::create_dir_all(state.path().join("kernels/k")).unwrap();
    std::fs::copy(TEST_KERNEL, state.path().join("kernels/k/vmlinux")).unwrap();
    let launch = |kernel: String, disk: Option<String>| LaunchSpec {
        config: None,
        qemu: None,
        initrd: None,
        vm: "evil".into(),
        kernel,
        disk,
        cpus: 1,
        memory_mib: 32,
    };
    for (kernel, disk) in [
        ("/etc/passwd".to_string(), None),
        (format!("{}/kernels/k/../../../etc/passwd", state.path().display()), None),
        (format!("{}/kernels/k/vmlinux", state.path().display()), Some("/etc/shadow".to_string())),
        (format!("{}/kernels/k", state.path().display()), None),
    ] {
        let reply = c.call(&HelperRequest::LaunchVm(launch(kernel, disk))).await.unwrap();
        refused(reply, ErrorKind::PermissionDenied, "refusing");
    }
    let mut bad = launch(format!("{}/kernels/k/vmlinux", state.path().display()), None);
    bad.config = Some("{ not json".into());
    refused(c.call(&HelperRequest::LaunchVm(bad)).await.unwrap(), ErrorKind::InvalidInput, "not JSON");
    assert!(!state.path().join("jail").exists(), "no jail was made");
}

#[tokio::test]
async fn firecracker_runs_in_its_jail_and_is_cleaned_up() {
    let state = tempfile::tempdir().unwrap();
    let _jails = chaos_tests::JailMount(state.path().to_path_buf());
    if firecracker().is_none() {
        capable("kvm", false, "firecracker or /dev/kvm is missing");
        return;
    }
    let Some((mut h, mut c)) = helper(state.path()).await else { return };
    std::fs::create_dir_all(state.path().join("kernels/test")).unwrap();
    let kernel = state.path().join("kernels/test/vmlinux");
    std::fs::copy(TEST_KERNEL, &kernel).unwrap();
    let (mut console, console_w) = std::io::pipe().unwrap();
    let spec = LaunchSpec {
        config: None,
        qemu: None,
        initrd: None,
        vm: "jailed".into(),
        kernel: kernel.display().to_string(),
        disk: None,
        cpus: 1,
        memory_mib: 32,
    };
    c.send_with_fd(&HelperRequest::LaunchVm(spec), console_w.as_fd()).await.unwrap();
    drop(console_w);
    let (pid, root) = match c.next().await.unwrap().unwrap().0 {
        HelperResponse::Launched { pid, jail_root } => (pid, std::path::PathBuf::from(jail_root)),
        other => panic!("{other:?}"),
    };
    assert!(root.starts_with(state.path().join("jail")), "{}", root.display());
    assert_eq!(
        std::fs::read(root.join("vmlinux")).unwrap(),
        std::fs::read(&kernel).unwrap(),
        "the kernel is bound into the jail"
    );
    let jails = nix::sys::statfs::statfs(&state.path().join("jail")).unwrap();
    assert_eq!(jails.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC, "jails live on a tmpfs");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !root.join("api.sock").exists() {
        assert!(Instant::now() < deadline, "Firecracker never made its API socket in the jail");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("NSpid:")
            && status.lines().any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "pid 1 of a new PID namespace: {status}"
    );

    // Configure and boot it over its API socket, in reset mode: it exits by itself.
    let api = root.join("api.sock");
    for (path, body) in [
        // Firecracker's log to its file (the helper made it), so the console holds only the guest.
        ("/logger", r#"{"log_path":"/firecracker.log","level":"Info"}"#),
        ("/boot-source", r#"{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0 banger.mode=reset"}"#),
        ("/machine-config", r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        ("/actions", r#"{"action_type":"InstanceStart"}"#),
    ] {
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&api)
            .args(["-X", "PUT", &format!("http://localhost{path}"), "-d", body])
            .status();
        if out.is_err() {
            capable("curl", false, "curl is missing");
            return;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    {
        assert!(Instant::now() < deadline, "the VM did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    console.read_to_string(&mut text).unwrap();
    assert!(text.contains("BANGER-TEST-KERNEL booted"), "{text}");

    assert_eq!(
        c.call(&HelperRequest::KillVm { vm: "jailed".into(), pid }).await.unwrap(),
        HelperResponse::Ok,
        "a dead VM is fine"
    );
    assert_eq!(c.call(&HelperRequest::CleanJail { vm: "jailed".into() }).await.unwrap(), HelperResponse::Ok);
    assert!(!root.exists(), "the jail is gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root.display().to_string()), "nothing stays mounted in it: {mounts}");
    assert!(kernel.is_file(), "the kernel itself stays");
    // A helper that stops with no jail left takes its tmpfs with it.
    assert!(h.terminate().success());
    let jails = nix::sys::statfs::statfs(&state.path().join("jail")).unwrap();
    assert_ne!(jails.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC, "the jails' tmpfs is unmounted");
    for cg in [
        "/sys/fs/cgroup/cpu/firecracker/jailed",
        "/sys/fs/cgroup/memory/firecracker/jailed",
        "/sys/fs/cgroup/firecracker/jailed",
    ] {
        assert!(!std::path::Path::new(cg).exists(), "{cg} is gone");
    }
}
