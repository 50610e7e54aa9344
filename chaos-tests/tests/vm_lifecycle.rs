//! VMs on real Firecracker through the real daemon, helper and jailer, booting the test kernel.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use chaos_tests::stderr;
use chaos_tests::vms::VmHost;

fn wait_for(host: &VmHost, name: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = host.inspect(name);
        let now =
            if v["state"].is_string() { v["state"].as_str().unwrap().to_string() } else { "Failed".into() };
        if now == state {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} never reached {state}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The console is copied by a thread as it arrives: give it a moment.
fn wait_log(host: &VmHost, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = host.ok(&["vm", "logs", name]);
        if logs.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}'s console never showed {needle:?}: {logs}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn create_start_stop_kill_restart_rm() {
    let Some(host) = VmHost::start().await else { return };
    let out = host.ok(&[
        "vm",
        "create",
        "web",
        "--image",
        "base",
        "--no-net",
        "--disk",
        "96M",
        "--kernel-arg",
        "banger.mode=wait",
    ]);
    assert!(
        out.starts_with("vm web: ") && out.contains("96.0 MiB disk, image base, kernel default, no network"),
        "{out}"
    );
    assert_eq!(host.inspect("web")["state"], "Created");

    let out = host.ok(&["vm", "start", "web"]);
    assert!(out.starts_with("web running (pid "), "{out}");
    let pid = host.inspect("web")["pid"].as_u64().unwrap();
    assert!(host.jail("web").join("root/api.sock").exists(), "it runs in its jail");
    let spec = &host.inspect("web")["spec"];
    let (cpus, memory) = (spec["cpus"].as_u64().unwrap(), spec["memory_mib"].as_u64().unwrap());
    assert_eq!(
        host.cgroup_limits("web", pid),
        (cpus * 100_000, (memory + 64) << 20),
        "its CPU and memory limits hold its vCPUs and memory, plus Firecracker's own"
    );
    wait_log(&host, "web", "BANGER-TEST-KERNEL waiting for ctrl-alt-del");
    let ps = host.ok(&["ps"]);
    assert!(ps.contains("web") && ps.contains("running") && ps.contains(&pid.to_string()), "{ps}");

    let out = host.ok(&["vm", "stop", "web"]);
    assert_eq!(out.trim(), "web stopped");
    let v = host.inspect("web");
    assert_eq!(v["last_exit"], "exit code 0", "a graceful stop: {v}");
    wait_log(&host, "web", "got ctrl-alt-del");
    assert!(!host.jail("web").exists(), "the jail is released");
    assert_eq!(host.cgroups_left("web"), Vec::<std::path::PathBuf>::new(), "the cgroups are released");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    );
    assert!(host.ok(&["ps"]).lines().count() == 1, "ps lists running VMs only");
    assert!(host.ok(&["ps", "--all"]).contains("stopped"));

    host.ok(&["vm", "start", "web"]);
    let out = host.ok(&["vm", "kill", "web"]);
    assert_eq!(out.trim(), "web stopped");
    assert_eq!(host.inspect("web")["last_exit"], "killed");

    let out = host.ok(&["vm", "restart", "web"]);
    assert!(out.starts_with("web running"), "{out}");
    let out = host.cli(&["vm", "rm", "web"]);
    assert_eq!(out.status.code(), Some(4), "a running VM is not removed without --force");
    assert!(stderr(&out).contains("error: VM web is running; cannot remove it"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hint: stop it first (banger vm stop web), or force it: banger vm rm -f web"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.ok(&["rm", "-f", "web"]).trim(), "removed web");
    assert!(!host.daemon.dir.path().join("vms/web").exists() && !host.jail("web").exists());
    assert!(host.cgroups_left("web").is_empty());
    assert!(host.cgroups_left("").is_empty(), "the state dir's cgroup goes with its last VM");
    let out = host.cli(&["vm", "inspect", "web"]);
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test]
async fn a_guest_that_powers_off_by_itself_is_stopped() {
    let Some(host) = VmHost::start().await else { return };
    host.create("oneshot", "reset");
    host.ok(&["vm", "start", "oneshot"]);
    let v = wait_for(&host, "oneshot", "Stopped");
    assert_eq!(v["last_exit"], "exit code 0");
    wait_log(&host, "oneshot", "BANGER-TEST-KERNEL booted");
}

#[tokio::test]
async fn a_killed_vmm_fails_the_vm_and_releases_it() {
    let Some(host) = VmHost::start().await else { return };
    host.create_networked("victim");
    host.ok(&["vm", "start", "victim"]);
    wait_log(&host, "victim", "waiting for ctrl-alt-del");
    let ip = host.inspect("victim")["spec"]["ip"].as_str().unwrap().to_string();
    let pid = host.inspect("victim")["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = wait_for(&host, "victim", "Failed");
    let reason = v["state"]["Failed"].as_str().unwrap();
    assert!(reason.contains("the VMM exited unexpectedly (killed)"), "{reason}");
    assert!(reason.contains("BANGER-TEST-KERNEL"), "the reason carries the last console lines: {reason}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.jail("victim").exists() {
        assert!(Instant::now() < deadline, "the jail was not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Tap and address are released too.
    let leases = std::fs::read_to_string(host.daemon.dir.path().join("network.json")).unwrap();
    assert!(!leases.contains("victim"), "the address went back to the pool: {leases}");
    assert!(host.inspect("victim")["spec"]["ip"].is_null());
    let taps = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &host.bridge])
        .output()
        .unwrap();
    assert!(taps.stdout.is_empty(), "no tap is left: {}", String::from_utf8_lossy(&taps.stdout));
    // A failed VM starts again, with an address leased anew.
    assert!(host.ok(&["vm", "start", "victim"]).starts_with("victim running"));
    assert_eq!(
        host.inspect("victim")["spec"]["ip"].as_str(),
        Some(ip.as_str()),
        "the free address comes back"
    );
    host.ok(&["vm", "stop", "victim"]);
}

#[tokio::test]
async fn bad_requests_are_refused_with_advice() {
    let Some(host) = VmHost::start().await else { return };
    let out = host.cli(&["vm", "create", "Bad_Name", "--image", "base", "--no-net"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid VM name"), "{}", stderr(&out));
    let out = host.cli(&["vm", "create", "x", "--image", "nope", "--no-net"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no image named \"nope\""), "{}", stderr(&out));
    let out = host.cli(&["vm", "create", "x", "--image", "base", "--kernel", "nope", "--no-net"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("hint: import one: banger kernel import PATH --name nope"),
        "{}",
        stderr(&out)
    );
    let out = host.cli(&["vm", "create", "x", "--image", "base", "--no-net", "--disk", "1M"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("a 1 MiB disk cannot hold image base"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: pass --disk "), "{}", stderr(&out));
    // Settings the host or Firecracker cannot give are refused at create, not at start.
    for (flag, value, says) in [
        ("--memory", "0", "--memory 0 MiB is out of range"),
        ("--cpus", "0", "--cpus 0 is out of range"),
        ("--cpus", "33", "--cpus 33 is out of range"),
    ] {
        let out = host.cli(&["vm", "create", "x", "--image", "base", "--no-net", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    // A kernel that cannot boot is refused at import, and a bad kernel name is called one.
    let mut header = vec![0u8; 64];
    header[..5].copy_from_slice(b"\x7fELF\x02");
    (header[16], header[18]) = (2, 0x3e);
    let bare = host.daemon.dir.path().join("bare.elf");
    std::fs::write(&bare, &header).unwrap();
    let out = host.cli(&["kernel", "import", bare.to_str().unwrap(), "--name", "bare"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("its ELF has no loadable segment"), "{}", stderr(&out));
    let out = host.cli(&["kernel", "import", bare.to_str().unwrap(), "--name", "Bad/Name"]);
    assert!(stderr(&out).contains("invalid kernel name"), "{}", stderr(&out));
    host.create("dup", "wait");
    let out = host.cli(&["vm", "create", "dup", "--image", "base", "--no-net"]);
    assert_eq!(out.status.code(), Some(4));
    let out = host.cli(&["vm", "stop", "ghost"]);
    assert_eq!(out.status.code(), Some(3));
    let out = host.cli(&["kernel", "rm", "default"]);
    assert_eq!(out.status.code(), Some(4), "a kernel in use is kept");
    assert!(
        !std::fs::read_dir(host.daemon.dir.path().join("vms"))
            .unwrap()
            .any(|e| e.unwrap().file_name() == "x"),
        "nothing half-created"
    );
}

#[tokio::test]
async fn a_networked_vm_gets_a_tap_an_address_and_its_kernel_arguments() {
    let Some(host) = VmHost::start().await else { return };
    let out = host.create_networked("net1");
    let v = host.inspect("net1");
    let ip = v["spec"]["ip"].as_str().unwrap().to_string();
    assert!(out.trim_end().ends_with(&ip), "the spec line ends with the address: {out}");
    assert!(ip.starts_with("10.250.") && ip.ends_with(".2"), "the first lease: {ip}");
    let mac = v["spec"]["mac"].as_str().unwrap().to_string();

    host.ok(&["vm", "start", "net1"]);
    let ip_cmd = |args: &[&str]| {
        String::from_utf8_lossy(&std::process::Command::new("ip").args(args).output().unwrap().stdout)
            .into_owned()
    };
    let taps: Vec<String> = ip_cmd(&["-o", "link", "show", "master", &host.bridge])
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect();
    assert_eq!(taps.len(), 1, "one tap on {}: {taps:?}", host.bridge);
    let gateway = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    assert!(ip_cmd(&["addr", "show", "dev", &host.bridge]).contains(&format!("inet {gateway}/24")));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.jail("net1").join("root/vm.json")).unwrap()).unwrap();
    let expected = format!("ip={ip}::{gateway}:255.255.255.0::eth0:off:{gateway}");
    let boot_args = config["boot-source"]["boot_args"].as_str().unwrap();
    assert!(boot_args.contains(&expected), "the kernel command line carries the address: {boot_args}");
    let nic = &config["network-interfaces"][0];
    assert_eq!(
        (nic["host_dev_name"].as_str(), nic["guest_mac"].as_str()),
        (Some(taps[0].as_str()), Some(mac.as_str()))
    );

    host.ok(&["vm", "stop", "net1"]);
    assert!(
        ip_cmd(&["-o", "link", "show", "master", &host.bridge]).trim().is_empty(),
        "the tap is deleted with the VM's stop"
    );
    host.ok(&["vm", "create", "net2", "--image", "base", "--disk", "96M"]);
    assert_ne!(host.inspect("net2")["spec"]["ip"].as_str().unwrap(), ip, "addresses are not shared");
    host.ok(&["vm", "rm", "net1"]);
    host.create_networked("net3");
    assert_eq!(
        host.inspect("net3")["spec"]["ip"].as_str().unwrap(),
        ip,
        "a removed VM's address is free again"
    );

    host.ok(&["vm", "start", "net3"]);
    let out = host.cli(&["system", "uninstall"]);
    assert_eq!(out.status.code(), Some(4), "refused while a VM runs");
    host.ok(&["vm", "stop", "net3"]);
    let out = host.ok(&["system", "uninstall"]);
    assert_eq!(out.trim(), format!("removed bridge {b} and nftables table {b}", b = host.bridge));
    assert!(ip_cmd(&["link", "show", "dev", &host.bridge]).is_empty(), "the bridge is gone");
    let tables = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&host.bridge), "the NAT table is gone");
    // The next networked start sets them up again.
    host.ok(&["vm", "start", "net3"]);
    assert!(!ip_cmd(&["link", "show", "dev", &host.bridge]).is_empty());
    host.ok(&["vm", "stop", "net3"]);
}

#[tokio::test]
async fn logs_follow_the_console_until_the_vm_stops() {
    let Some(host) = VmHost::start().await else { return };
    host.create("chatty", "wait");
    host.ok(&["vm", "start", "chatty"]);
    wait_log(&host, "chatty", "waiting for ctrl-alt-del");
    let follower = std::process::Command::new(chaos_tests::bin("banger"))
        .arg("--state-dir")
        .arg(host.daemon.dir.path())
        .args(["vm", "logs", "-f", "chatty"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    host.ok(&["vm", "stop", "chatty"]);
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waiting for ctrl-alt-del") && text.contains("got ctrl-alt-del"),
        "followed to the end: {text}"
    );
}

#[tokio::test]
async fn a_guest_that_ignores_ctrl_alt_del_is_killed_after_the_timeout() {
    let Some(host) = VmHost::start().await else { return };
    host.create("stubborn", "hang");
    host.ok(&["vm", "start", "stubborn"]);
    wait_log(&host, "stubborn", "hanging, ignoring ctrl-alt-del");
    let t = Instant::now();
    assert_eq!(host.ok(&["vm", "stop", "stubborn", "--timeout", "400ms"]).trim(), "stubborn stopped");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "it waited for the timeout ({took:?})");
    assert!(took < Duration::from_secs(5), "then killed it ({took:?})");
    assert_eq!(host.inspect("stubborn")["last_exit"], "killed");
    assert!(!host.jail("stubborn").exists());
}

#[tokio::test]
async fn an_image_a_vm_was_made_from_is_kept_unless_forced() {
    let Some(host) = VmHost::start().await else { return };
    host.create("user", "wait");
    let out = host.cli(&["image", "rm", "base"]);
    assert_eq!(out.status.code(), Some(4), "refused while a VM uses it");
    assert!(stderr(&out).contains("image base is used by VM(s) user"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: remove them first, or `banger image rm --force base`"));
    assert!(host.ok(&["image", "rm", "--force", "base"]).contains("removed base"));
    // The VM's disk is its own clone: it still starts.
    assert!(host.ok(&["vm", "start", "user"]).starts_with("user running"));
    host.ok(&["vm", "stop", "user"]);
}

#[tokio::test]
async fn prune_removes_every_vm_that_is_not_running() {
    let Some(host) = VmHost::start().await else { return };
    for n in ["idle-a", "idle-b", "busy"] {
        host.create(n, "wait");
    }
    host.ok(&["vm", "start", "busy"]);
    let out = host.cli(&["prune"]);
    assert_eq!(out.status.code(), Some(2), "no terminal, no --force: it asks for confirmation");
    assert!(stderr(&out).contains("pass --force"), "{}", stderr(&out));
    assert_eq!(host.ok(&["prune", "--force"]).trim(), "removed 2 VM(s): idle-a, idle-b");
    let left: Vec<serde_json::Value> =
        serde_json::from_str(&host.ok(&["vm", "ls", "--all", "--json"])).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["name"], "busy");
    host.ok(&["vm", "stop", "busy"]);
}

/// `dumpe2fs -h`: the filesystem's size in bytes.
fn filesystem_bytes(image: &std::path::Path) -> u64 {
    let out = std::process::Command::new("dumpe2fs").arg("-h").arg(image).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
        line[name.len()..].trim().parse().unwrap()
    };
    field("Block count:") * field("Block size:")
}

#[tokio::test]
async fn a_vm_disk_is_its_own_clone_grown_to_its_size() {
    let Some(host) = VmHost::start().await else { return };
    let state = host.daemon.dir.path();
    let rootfs = state.join("images/base/rootfs.ext4");
    let image_bytes = std::fs::metadata(&rootfs).unwrap().len();
    assert!(image_bytes < 96 << 20, "the test needs an image smaller than its VMs' disks");
    host.create("one", "wait");
    host.create("two", "wait");
    // The image grown to 96 MiB once, kept beside it for the next VM of that size.
    let grown = state.join(format!("images/base/rootfs-{}.ext4", 96u64 << 20));
    assert_eq!(filesystem_bytes(&grown), 96 << 20);
    assert_eq!(std::fs::metadata(&rootfs).unwrap().len(), image_bytes, "the image itself is untouched");
    let mut inodes = vec![std::fs::metadata(&grown).unwrap().ino()];
    for vm in ["one", "two"] {
        let disk = state.join(format!("vms/{vm}/disk.ext4"));
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 96 << 20, "{vm}'s disk file");
        assert_eq!(filesystem_bytes(&disk), 96 << 20, "{vm}'s filesystem fills its disk");
        let fsck = std::process::Command::new("e2fsck").arg("-fn").arg(&disk).output().unwrap();
        assert!(fsck.status.success(), "{vm}: {}", String::from_utf8_lossy(&fsck.stdout));
        let mounted = chaos_tests::tree::Mounted::ext4(&disk);
        assert_eq!(std::fs::read(mounted.dir.path().join("etc/hostname")).unwrap(), b"test\n");
        inodes.push(std::fs::metadata(&disk).unwrap().ino());
    }
    inodes.dedup();
    assert_eq!(inodes.len(), 3, "each VM writes to a file of its own");
    // A VM of another size gets a base of its own; the image's size needs none.
    host.ok(&["vm", "create", "big", "--image", "base", "--no-net", "--disk", "128M"]);
    assert_eq!(filesystem_bytes(&state.join("vms/big/disk.ext4")), 128 << 20);
    host.ok(&["vm", "create", "exact", "--image", "base", "--no-net", "--disk", &image_bytes.to_string()]);
    let mut bases: Vec<String> = std::fs::read_dir(state.join("images/base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rootfs"))
        .collect();
    bases.sort();
    let mut want = vec![format!("rootfs-{}.ext4", 128u64 << 20), format!("rootfs-{}.ext4", 96u64 << 20)];
    want.push("rootfs.ext4".into());
    want.sort();
    assert_eq!(bases, want, "one grown base per size, none for the image's own");
    let removed: serde_json::Value =
        serde_json::from_str(&host.ok(&["image", "rm", "--force", "base", "--json"])).unwrap();
    assert_eq!(removed, serde_json::json!({ "removed": "base" }));
    assert!(!state.join("images/base").exists(), "grown bases go with their image");
    let removed: serde_json::Value = serde_json::from_str(&host.ok(&["vm", "rm", "two", "--json"])).unwrap();
    assert_eq!(removed, serde_json::json!({ "removed": "two" }));
    assert!(host.ok(&["vm", "start", "one"]).starts_with("one running"), "and the VMs keep their disks");
    host.ok(&["vm", "stop", "one"]);
}
