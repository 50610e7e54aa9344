//! The guest path under faults and confinement, through QEMU TCG with Debian's cloud kernel:
//! an agent stopped or killed inside the guest, the guest's network to the host's bridge,
//! QEMU's jail as seen from /proc, and Firecracker's vsock tried for the agent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Read;
use std::time::{Duration, Instant};

use chaos_tests::guests::GuestHost;
use chaos_tests::vms::VmHost;
use chaos_tests::{other_user, stderr, stdout};

fn inspect(g: &GuestHost, vm: &str) -> serde_json::Value {
    serde_json::from_str(&g.ok(&["vm", "inspect", vm])).expect("inspect prints JSON")
}

/// An agent that stops answering (SIGSTOP on its server, from inside the guest) leaves the VM
/// degraded: execs fail at once with why, `vm ls` says so, and `vm stop` still stops it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_agent_degrades_the_vm_and_stop_still_works() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("numb");
    assert!(inspect(&g, "numb")["agent"]["Ready"].is_object(), "ready before the fault");
    // The exec's parent is the agent's server: stopped, it answers nothing more, this exec's
    // exit included; the daemon's pings find it out.
    let started = Instant::now();
    let out = g.cli(&["vm", "exec", "numb", "--", "sh", "-c", "kill -STOP $PPID"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("lost the guest agent"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20), "found out in {:?}", started.elapsed());
    let agent = &inspect(&g, "numb")["agent"];
    assert!(agent["Degraded"].as_str().is_some_and(|w| w.contains("ping")), "{agent}");
    let ls = g.ok(&["vm", "ls"]);
    let line = ls.lines().find(|l| l.starts_with("numb ")).expect("listed");
    assert!(line.contains("running") && line.contains("degraded"), "{ls}");
    let started = Instant::now();
    let out = g.cli(&["vm", "exec", "numb", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "Unavailable: {}", stderr(&out));
    assert!(stderr(&out).contains("does not answer") && stderr(&out).contains("vm stop"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10), "refused in {:?}", started.elapsed());
    g.ok(&["vm", "stop", "numb", "--timeout", "2s"]);
    let v = inspect(&g, "numb");
    assert_eq!(v["state"], "Stopped", "{v}");
    assert!(v["agent"].is_null(), "no agent once stopped: {v}");
}

/// An agent killed inside the guest is started again by PID 1; the exec it was running fails
/// with why, and the next one works.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_comes_back() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("phoenix");
    let out = g.cli(&["vm", "exec", "phoenix", "--", "sh", "-c", "kill -9 $PPID; sleep 5"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("lost the guest agent"), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = g.cli(&["vm", "exec", "phoenix", "--", "echo", "back"]);
        if out.status.success() {
            assert_eq!(stdout(&out), "back\n");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not come back: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(inspect(&g, "phoenix")["agent"]["Ready"].is_object());
    let logs = g.ok(&["vm", "logs", "phoenix"]);
    assert!(logs.contains("starting it again"), "PID 1 says it restarted the server: {logs}");
}

/// A networked guest reaches a listener on the host's end of its bridge over its tap.
#[tokio::test(flavor = "multi_thread")]
async fn the_guest_reaches_the_host_over_its_tap() {
    let Some(g) = GuestHost::start().await else { return };
    let vm = ["--vmm", "qemu", "--cpus", "1", "--memory", "256"];
    let mut args = vec!["vm", "run", "-d", "--name", "net"];
    args.extend(vm);
    args.push("busybox");
    g.ok(&args);
    let ip = inspect(&g, "net")["spec"]["ip"].as_str().expect("a networked VM has an address").to_string();
    let host: std::net::Ipv4Addr = ip.parse().unwrap();
    let gateway = std::net::Ipv4Addr::from(u32::from(host) & 0xffff_ff00 | 1);
    let listener = std::net::TcpListener::bind((gateway, 0)).expect("listen on the bridge address");
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("the guest connects");
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        (peer.ip(), got)
    });
    let script = format!("echo hello from $(hostname) | nc {gateway} {port}");
    let out = g.cli(&["vm", "exec", "net", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (peer, got) = accept.join().unwrap();
    assert_eq!(peer, std::net::IpAddr::V4(host), "the connection comes from the VM's address");
    assert_eq!(got, "hello from net\n");
}

/// QEMU runs as the daemon's owner, chrooted in its jail, with no new privileges, in its own
/// network, IPC and UTS namespaces and the VM's cgroup, holding no descriptor of the daemon's or
/// the helper's; its jail's mounts go with it.
#[tokio::test(flavor = "multi_thread")]
async fn qemu_runs_confined_in_its_jail() {
    let owner = other_user();
    let Some(g) = GuestHost::start_as(Some(owner)).await else { return };
    g.run_detached("boxed");
    let v = inspect(&g, "boxed");
    let pid = v["pid"].as_u64().expect("a pid") as u32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>())
    };
    let uid = owner.0.to_string();
    assert_eq!(field("Uid:").unwrap(), [&uid, &uid, &uid, &uid], "{status}");
    assert_eq!(field("Groups:").unwrap(), Vec::<&str>::new(), "no supplementary groups");
    assert_eq!(field("NoNewPrivs:").unwrap(), ["1"]);
    assert_eq!(field("CapEff:").unwrap(), ["0000000000000000"]);
    let state = g.host.daemon.dir.path().to_path_buf();
    let jail = state.join("jail/qemu/boxed/root");
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, jail, "QEMU's / is its jail");
    for ns in ["net", "ipc", "uts"] {
        let (theirs, ours) = (format!("/proc/{pid}/ns/{ns}"), format!("/proc/self/ns/{ns}"));
        assert_ne!(
            std::fs::read_link(theirs).unwrap(),
            std::fs::read_link(ours).unwrap(),
            "its own {ns} namespace"
        );
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.lines().any(|l| l.ends_with("/boxed") && l.contains("/banger-")), "{cgroup}");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(fd.path()).unwrap().display().to_string();
        let n: u32 = fd.file_name().to_str().unwrap().parse().unwrap();
        // Paths read from here are the host's: the jail's files show under the jail.
        let allowed = ["socket:", "pipe:", "anon_inode:", "/dev/null", "/dev/urandom"]
            .iter()
            .any(|p| target.starts_with(p))
            || target.starts_with(&jail.display().to_string())
            || (n <= 2 && target.ends_with("console.log"));
        assert!(allowed, "QEMU holds fd {n} on {target}");
    }
    // The host's files are not in the jail, and what is lent is read-only.
    assert!(!jail.join("etc/passwd").exists());
    let lent = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let usr =
        lent.lines().find(|l| l.contains(&format!("{} ", jail.join("usr").display()))).expect("usr lent");
    assert!(usr.split_whitespace().nth(5).unwrap().starts_with("ro"), "{usr}");
    g.ok(&["vm", "rm", "-f", "boxed"]);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&jail.display().to_string()), "mounts left: {mounts}");
    assert!(!jail.exists(), "the jail is gone");
}

/// A Firecracker VM gets the vsock device, and the daemon tries the agent on it (the tiny test
/// kernel never answers: the agent stays "waiting").
#[tokio::test(flavor = "multi_thread")]
async fn a_firecracker_vm_is_tried_for_its_agent_over_vsock() {
    let Some(host) = VmHost::start().await else { return };
    host.create("fc", "wait");
    host.ok(&["vm", "start", "fc"]);
    let v: serde_json::Value = serde_json::from_str(&host.ok(&["vm", "inspect", "fc"])).unwrap();
    assert_eq!(v["spec"]["vmm"], "Firecracker");
    assert_eq!(v["agent"], "Waiting", "{v}");
    let vsock = host.daemon.dir.path().join("jail/firecracker/fc/root/vsock.sock");
    assert!(vsock.exists(), "Firecracker made the vsock's host socket");
    // What the daemon does every few milliseconds: connect and ask for the agent's port.
    let mut s = std::os::unix::net::UnixStream::connect(&vsock).unwrap();
    std::io::Write::write_all(&mut s, b"CONNECT 52\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = [0u8; 16];
    let n = s.read(&mut reply).unwrap_or(0);
    assert!(!reply[..n].starts_with(b"OK"), "no guest listens on the agent's port");
    let logs = host.ok(&["vm", "logs", "fc"]);
    assert!(logs.contains("BANGER-TEST-KERNEL"), "{logs}");
    host.ok(&["vm", "kill", "fc"]);
}
