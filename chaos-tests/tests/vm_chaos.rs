//! Many VMs at once, and VMs outliving their daemon: 20 start in parallel and stop cleanly; a
//! daemon killed with 20 VMs running re-adopts all of them; a VMM that died while the daemon
//! was down is marked failed and released.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use chaos_tests::vms::VmHost;

const N: usize = 20;

fn names() -> Vec<String> {
    (0..N).map(|i| format!("vm{i:02}")).collect()
}

/// Runs `banger ARGS NAME` for every name at once and checks each one succeeded.
fn parallel(host: &VmHost, args: &[&str], names: &[String]) {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let mut all: Vec<&str> = args.to_vec();
                all.push(n);
                s.spawn(move || host.ok(&all))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

fn states(host: &VmHost) -> Vec<(String, String, Option<u64>)> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&host.ok(&["vm", "ls", "--all", "--json"])).unwrap();
    list.iter()
        .map(|v| {
            let state = v["state"].as_str().map(str::to_string).unwrap_or_else(|| "Failed".into());
            (v["name"].as_str().unwrap().to_string(), state, v["pid"].as_u64())
        })
        .collect()
}

#[tokio::test]
async fn twenty_vms_start_in_parallel_and_stop_cleanly() {
    let Some(host) = VmHost::start().await else { return };
    let names = names();
    for n in &names {
        host.create(n, "wait");
    }
    let t = Instant::now();
    parallel(&host, &["vm", "start"], &names);
    eprintln!("{N} VMs started in {:?}", t.elapsed());
    let running = states(&host);
    assert!(running.iter().all(|(_, s, pid)| s == "Running" && pid.is_some()), "{running:?}");
    parallel(&host, &["vm", "stop"], &names);
    let stopped = states(&host);
    assert!(stopped.iter().all(|(_, s, _)| s == "Stopped"), "{stopped:?}");
    for n in &names {
        assert_eq!(host.inspect(n)["last_exit"], "exit code 0", "{n} shut down gracefully");
        assert!(!host.jail(n).exists(), "{n}'s jail is released");
    }
}

#[tokio::test]
async fn a_daemon_killed_with_twenty_running_vms_readopts_them_all() {
    let Some(mut host) = VmHost::start().await else { return };
    let names = names();
    for n in &names {
        host.create(n, "wait");
    }
    parallel(&host, &["vm", "start"], &names);
    let before = states(&host);
    assert!(before.iter().all(|(_, s, _)| s == "Running"));

    host.daemon.kill9();
    host.daemon.restart().await;
    let after = states(&host);
    assert_eq!(after, before, "every VM is re-adopted, with the same VMM");
    let status = host.ok(&["daemon", "status"]);
    assert!(status.contains(&format!("{N} VM(s)")), "{status}");

    parallel(&host, &["vm", "stop"], &names);
    let not_stopped: Vec<_> = states(&host)
        .into_iter()
        .filter(|(_, s, _)| s != "Stopped")
        .map(|(n, _, _)| host.inspect(&n))
        .collect();
    assert!(not_stopped.is_empty(), "re-adopted VMs stop: {not_stopped:#?}");
    assert!(names.iter().all(|n| !host.jail(n).exists()));
    for n in &names {
        assert_eq!(host.inspect(n)["last_exit"], "exit code 0", "{n} shut down gracefully");
        // Its console went on being recorded while no daemon ran and after the new one took over.
        let logs = host.ok(&["vm", "logs", n]);
        assert!(logs.contains("got ctrl-alt-del"), "{n}'s console after the restart: {logs}");
    }
}

#[tokio::test]
async fn a_vmm_that_died_while_the_daemon_was_down_is_failed_and_released() {
    let Some(mut host) = VmHost::start().await else { return };
    host.create("orphan", "wait");
    host.ok(&["vm", "start", "orphan"]);
    let pid = host.inspect("orphan")["pid"].as_u64().unwrap() as i32;
    host.daemon.kill9();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    host.daemon.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = host.inspect("orphan");
        if let Some(reason) = v["state"]["Failed"].as_str() {
            assert!(reason.contains("exited unexpectedly"), "{reason}");
            break;
        }
        assert!(Instant::now() < deadline, "not marked failed: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    while host.jail("orphan").exists() {
        assert!(Instant::now() < deadline, "the jail was not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    while !host.cgroups_left("orphan").is_empty() {
        assert!(Instant::now() < deadline, "the cgroups were not released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The helper killed while VMs start: each start either completes or fails cleanly, and
/// nothing is leaked: every Firecracker left running belongs to a VM the daemon calls running.
#[tokio::test]
async fn a_helper_killed_mid_start_leaks_nothing() {
    let Some(mut host) = VmHost::start().await else { return };
    let names: Vec<String> = (0..6).map(|i| format!("hk{i}")).collect();
    for n in &names {
        host.create(n, "wait");
    }
    let state = host.daemon.dir.path().to_path_buf();
    let starts: Vec<_> = names
        .iter()
        .map(|n| {
            let (state, n) = (state.clone(), n.clone());
            std::thread::spawn(move || chaos_tests::banger(&state, &["vm", "start", &n]).status.success())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(15));
    host.helper.kill();
    // The helper comes back (systemd or `daemon start` restarts it); the link reconnects and
    // the starts waiting for it go on.
    let socket = host.helper.socket.clone();
    host.helper = chaos_tests::TestHelper::start_in(&socket, 0, host.daemon.dir.path()).await;
    let outcomes: Vec<bool> = starts.into_iter().map(|h| h.join().unwrap()).collect();
    for (n, started) in names.iter().zip(&outcomes) {
        let state = states(&host).into_iter().find(|(name, _, _)| name == n).unwrap();
        if *started {
            assert_eq!(state.1, "Running", "{n}: a start that succeeded runs");
        } else {
            assert_eq!(state.1, "Failed", "{n}: a start that failed leaves the VM failed");
        }
    }
    // What is not running is cleaned up: no jail, and no stray VMM.
    let running: Vec<u64> = states(&host).iter().filter(|s| s.1 == "Running").filter_map(|s| s.2).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (n, started) in names.iter().zip(&outcomes) {
        while !started && host.jail(n).exists() {
            assert!(Instant::now() < deadline, "{n}: its jail was leaked");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let vmms: Vec<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            cmd.contains("--id\0hk") && !stat.contains(") Z ")
        })
        .collect();
    for pid in &vmms {
        assert!(running.contains(pid), "firecracker {pid} runs for no running VM (running: {running:?})");
    }
    let ok = outcomes.iter().filter(|o| **o).count();
    eprintln!(
        "helper killed mid-start: {ok} of {} starts succeeded, {} VMMs running",
        names.len(),
        vmms.len()
    );
}

/// The daemon as an ordinary user, the helper as root serving only that user: VMs still run,
/// jailed as that user, and stop cleanly.
#[tokio::test]
async fn a_non_root_daemon_runs_vms_through_the_root_helper() {
    if !chaos_tests::capable("root", chaos_tests::is_root(), "making a second user needs root") {
        return;
    }
    let owner = chaos_tests::other_user();
    let Some(host) = VmHost::start_as(Some(owner)).await else { return };
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.daemon.pid())).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:") && l.contains(&owner.0.to_string())),
        "bangerd runs as the user"
    );
    host.create_networked("mine");
    host.ok(&["vm", "start", "mine"]);
    let pid = host.inspect("mine")["pid"].as_u64().unwrap();
    // `vm start` answers once the jailer has forked; its child drops to the user just after.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let vmm = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if vmm.lines().any(|l| l.starts_with("Uid:") && l.contains(&owner.0.to_string())) {
            break;
        }
        assert!(Instant::now() < deadline, "the VMM is jailed as the user: {vmm}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(host.ok(&["vm", "stop", "mine"]).trim(), "mine stopped");
    assert_eq!(host.inspect("mine")["last_exit"], "exit code 0");
}

/// Panics the daemon's actor `actor` and waits until the log shows `then`.
async fn panic_and_wait(host: &VmHost, actor: &str, then: &str) {
    use chaos_tests::protocol::daemon::{ChaosAction, Request, Response};
    let reply = host.daemon.call(&Request::Chaos(ChaosAction::Panic { actor: actor.into() })).await;
    assert_eq!(reply, Response::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host.daemon.log_text().contains(then) {
        assert!(Instant::now() < deadline, "after panicking {actor}, the log never showed {then:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A VM's actor that panics is replaced by the VmManager, which adopts the VM again: the VMM
/// keeps running, and the new actor can stop it.
#[tokio::test]
async fn a_panicking_vm_actor_is_replaced_and_the_vm_keeps_running() {
    let Some(host) = VmHost::start().await else { return };
    host.create("sturdy", "wait");
    host.ok(&["vm", "start", "sturdy"]);
    let pid = host.inspect("sturdy")["pid"].as_u64().unwrap();
    panic_and_wait(&host, "vm/sturdy", "a VM actor stopped; adopting the VM again").await;
    let v = host.inspect("sturdy");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("Running"), Some(pid)),
        "same VMM, still running"
    );
    assert_eq!(host.ok(&["vm", "stop", "sturdy"]).trim(), "sturdy stopped");
}

/// A VmManager that panics is restarted by the supervisor and adopts every VM again, once: its
/// old VM actors go with it, so the VMM's exit is handled by one actor, the one the stop asked.
#[tokio::test]
async fn a_panicking_vm_manager_is_restarted_and_adopts_each_vm_once() {
    let Some(host) = VmHost::start().await else { return };
    host.create("kept", "wait");
    host.ok(&["vm", "start", "kept"]);
    let pid = host.inspect("kept")["pid"].as_u64().unwrap();
    panic_and_wait(&host, "vms", "re-adopted a running VMM").await;
    let v = host.inspect("kept");
    assert_eq!((v["state"].as_str(), v["pid"].as_u64()), (Some("Running"), Some(pid)));
    // Killed: an actor that did not ask for this exit would call it a failure.
    assert_eq!(host.ok(&["vm", "kill", "kept"]).trim(), "kept stopped");
    // Let any second actor watching the same VMM act on its exit, then read the record.
    std::thread::sleep(Duration::from_millis(300));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.daemon.dir.path().join("vms/kept/vm.json")).unwrap())
            .unwrap();
    assert_eq!(record["info"]["state"], "Stopped", "one actor handled the exit: {record}");
    assert_eq!(host.inspect("kept")["state"], "Stopped");
}
