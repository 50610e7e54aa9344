//! `vm run`, `vm exec` and `vm cp` through the real CLI, daemon, helper, QEMU, a distro kernel
//! and banger-agent in the guest. Capability `qemu` (see `chaos_tests::guests`); the image
//! config test also needs `registry`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chaos_tests::guests::{GuestHost, OS_RELEASE};
use chaos_tests::{stderr, stdout};

/// `vm run` of the busybox image with `args` before the image and `command` after `--`.
fn run(g: &GuestHost, args: &[&str], command: &[&str]) -> std::process::Output {
    let mut all = vec!["vm", "run"];
    all.extend(GuestHost::VM);
    all.extend(args);
    all.push("busybox");
    all.push("--");
    all.extend(command);
    g.cli(&all)
}

fn exec(g: &GuestHost, name: &str, command: &[&str]) -> std::process::Output {
    let mut all = vec!["vm", "exec", name, "--"];
    all.extend(command);
    g.cli(&all)
}

#[tokio::test]
async fn run_prints_the_images_os_release_and_rm_leaves_no_vm() {
    let Some(g) = GuestHost::start().await else { return };
    let out = run(&g, &["--rm", "--name", "once", "--timings"], &["cat", "/etc/os-release"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), OS_RELEASE);
    for phase in ["create (disk)", "VMM start", "kernel → /init", "agent ready", "exec"] {
        assert!(stderr(&out).contains(phase), "--timings names {phase}: {}", stderr(&out));
    }
    assert_eq!(g.ok(&["vm", "ls", "--all", "--json"]).trim(), "[]", "--rm removed the VM");
}

#[tokio::test]
async fn exit_codes_come_back_exactly() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("codes");
    let code = |cmd: &[&str]| exec(&g, "codes", cmd).status.code();
    assert_eq!(code(&["true"]), Some(0));
    assert_eq!(code(&["false"]), Some(1));
    assert_eq!(code(&["sh", "-c", "exit 7"]), Some(7));
    assert_eq!(code(&["sh", "-c", "kill -9 $$"]), Some(128 + 9), "killed by a signal: 128 + n");
    assert_eq!(code(&["sh", "-c", "kill -TERM $$"]), Some(128 + 15));

    let started = Instant::now();
    let out = exec(&g, "codes", &["no-such-command"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a missing command fails at once: {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("banger: ") && stderr(&out).contains("not found"), "{}", stderr(&out));

    let out = g.cli(&["vm", "exec", "-w", "/no/such/dir", "codes", "--", "true"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("/no/such/dir"), "the reason names the directory: {}", stderr(&out));
    let out = g.cli(&["vm", "exec", "-u", "nobody-here", "codes", "--", "true"]);
    assert_eq!(out.status.code(), Some(126), "an unknown user: {}", stderr(&out));
}

#[tokio::test]
async fn detached_vm_takes_execs_with_env_workdir_and_user() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("bg");
    let v = serde_json::from_str::<serde_json::Value>(&g.ok(&["vm", "inspect", "bg"])).unwrap();
    assert!(v["agent"]["Ready"].is_object(), "-d returns once the agent is ready: {v}");
    let out = g.ok(&[
        "vm",
        "exec",
        "-e",
        "A=1",
        "-e",
        "B=two words",
        "-w",
        "/tmp",
        "-u",
        "app",
        "bg",
        "--",
        "sh",
        "-c",
        "echo \"$A|$B|$(pwd)|$(id -u):$(id -g)\"",
    ]);
    assert_eq!(out, "1|two words|/tmp|1000:1000\n");
    let out = g.ok(&["vm", "exec", "-u", "1000:0", "bg", "--", "id", "-g"]);
    assert_eq!(out.trim(), "0");
    let out = exec(&g, "bg", &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (stdout(&out).as_str(), stderr(&out).as_str()),
        ("out\n", "err\n"),
        "each stream to its own fd"
    );
}

#[tokio::test]
async fn stdin_is_piped_through() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("pipe");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut child = g
        .command(&["vm", "exec", "-i", "pipe", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data).map(|()| data));
    let out = child.wait_with_output().unwrap();
    let data = writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let want = chaos_tests::oci::sha256(&data);
    assert_eq!(stdout(&out).split_whitespace().next(), want.strip_prefix("sha256:"));
    // Without -i the process reads end-of-file at once.
    let out = g.cli(&["vm", "exec", "pipe", "--", "wc", "-c"]);
    assert_eq!(stdout(&out).trim(), "0");
}

/// Sets a pty's window size.
fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ");
}

/// Reads the pty until `needle` shows up (or panics after `timeout`).
fn read_until(master: &mut std::fs::File, seen: &mut String, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "never saw {needle:?} on the terminal: {seen:?}");
        match master.read(&mut buf) {
            Ok(0) => panic!("the terminal closed before {needle:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
}

#[tokio::test]
async fn a_tty_session_follows_a_resize() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("tty");
    let size = nix::pty::Winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let fcntl = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(fcntl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = g
        .command(&["vm", "exec", "-it", "tty", "--", "sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut seen = String::new();
    // Typed key by key, as a person does: stdin is streamed, not sent as one blob.
    for b in b"stty size\r" {
        master.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    read_until(&mut master, &mut seen, "30 100", Duration::from_secs(10));
    set_size(&master, 40, 120);
    // The test's pty is not banger's controlling terminal: send the signal a terminal would.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGWINCH)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"stty size\r").unwrap();
    read_until(&mut master, &mut seen, "40 120", Duration::from_secs(10));
    master.write_all(b"exit 3\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "banger did not exit after the shell did: {seen:?}");
        let _ = master.read(&mut [0u8; 4096]);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
}

#[tokio::test]
async fn tty_without_a_terminal_is_refused_fail() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("notty");
    let out = g.cli(&["vm", "exec", "-it", "notty", "--", "sh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a terminal"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_background_child_holding_stdout_does_not_hang_the_exec() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("bgchild");
    let started = Instant::now();
    let out = exec(&g, "bgchild", &["sh", "-c", "sleep 60 & echo done"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "done\n");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn two_execs_run_in_parallel_in_one_vm() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("par");
    let started = Instant::now();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|tag| {
            let script = format!("sleep 2; echo {tag}");
            g.command(&["vm", "exec", "par", "--", "sh", "-c", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert_eq!(stdout(&outs[0]), "a\n", "{}", stderr(&outs[0]));
    assert_eq!(stdout(&outs[1]), "b\n", "{}", stderr(&outs[1]));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "they ran one after the other: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ctrl_c_reaches_the_guest_process() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("intr");
    let mut child = g
        .command(&[
            "vm",
            "exec",
            "intr",
            "--",
            "sh",
            "-c",
            "trap 'echo got-int; exit 42' INT; sleep 60 & wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let started = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "banger did not end after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    assert_eq!(stdout(&out), "got-int\n");
}

/// A tree with what a copy must keep: owners, modes, symlinks (one dangling), mtimes.
fn sample_tree(root: &std::path::Path) {
    let t = root.join("tree");
    std::fs::create_dir_all(t.join("sub/deeper")).unwrap();
    std::fs::write(t.join("plain"), b"plain\n").unwrap();
    std::fs::write(t.join("sub/secret"), b"secret\n").unwrap();
    std::fs::write(t.join("sub/deeper/big"), vec![7u8; 5 << 20]).unwrap();
    std::fs::set_permissions(t.join("sub/secret"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(t.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/secret", t.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", t.join("dangling")).unwrap();
    let (uid, gid) = (Some(nix::unistd::Uid::from_raw(1234)), Some(nix::unistd::Gid::from_raw(5678)));
    nix::unistd::chown(&t.join("sub/secret"), uid, gid).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &t.join("link"),
        uid,
        gid,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let old = nix::sys::time::TimeVal::new(1_500_000_000, 0);
    nix::sys::stat::utimes(&t.join("plain"), &old, &old).unwrap();
}

#[tokio::test]
async fn cp_round_trip_keeps_owners_modes_symlinks_and_mtimes() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("cp");
    let local = tempfile::tempdir().unwrap();
    sample_tree(local.path());
    let src = local.path().join("tree");
    g.ok(&["vm", "exec", "cp", "--", "mkdir", "-p", "/srv/in"]);
    g.ok(&["vm", "cp", src.to_str().unwrap(), "cp:/srv/in"]);
    let inside = g.ok(&["vm", "exec", "cp", "--", "stat", "-c", "%u:%g %a", "/srv/in/tree/sub/secret"]);
    assert_eq!(inside.trim(), "1234:5678 640");
    let link = g.ok(&["vm", "exec", "cp", "--", "readlink", "/srv/in/tree/link"]);
    assert_eq!(link.trim(), "sub/secret");
    let back = tempfile::tempdir().unwrap();
    let dest = back.path().join("out");
    g.ok(&["vm", "cp", "cp:/srv/in/tree", dest.to_str().unwrap()]);
    let (ours, theirs) = (chaos_tests::tree::walk(&dest.join("tree")), chaos_tests::tree::walk(&src));
    assert_eq!(chaos_tests::tree::diff(&ours, &theirs), Vec::<String>::new());
    assert_eq!(std::fs::metadata(dest.join("tree/plain")).unwrap().mtime(), 1_500_000_000);
    // A single file keeps its name; `-` streams a tar to stdout.
    g.ok(&["vm", "cp", src.join("plain").to_str().unwrap(), "cp:/tmp"]);
    assert_eq!(g.ok(&["vm", "exec", "cp", "--", "cat", "/tmp/plain"]), "plain\n");
    let out = g.cli(&["vm", "cp", "cp:/tmp/plain", "-"]);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let names: Vec<String> =
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert_eq!(names, ["plain"]);
}

#[tokio::test]
async fn cp_from_a_missing_path_fails_with_the_reason() {
    let Some(g) = GuestHost::start().await else { return };
    g.run_detached("cpmiss");
    let dest = tempfile::tempdir().unwrap();
    let out = g.cli(&["vm", "cp", "cpmiss:/no/such/file", dest.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/no/such/file"), "{}", stderr(&out));
}

#[tokio::test]
async fn an_images_config_sets_entrypoint_env_workdir_and_user() {
    use chaos_tests::oci::{self, Compression, Format};
    use chaos_tests::registry::{self, TestRegistry};
    let Some(g) = GuestHost::start().await else { return };
    if !chaos_tests::capable("registry", registry::available(), "docker-registry is not installed") {
        return;
    }
    let reg = TestRegistry::start();
    let busybox = chaos_tests::guests::busybox().unwrap();
    let layer = chaos_tests::guests::busybox_rootfs(&busybox).dir("srv/app").bytes();
    let config = serde_json::json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo \"$GREETING from $(pwd) as $(id -u)\""],
        "Env": ["PATH=/bin", "GREETING=hello"],
        "WorkingDir": "/srv/app",
        "User": "1000",
    });
    let image = oci::image_configured(&[layer], Compression::Gzip, Format::Oci, "amd64", config);
    oci::push(&reg.addr, "test/app", Some("v1"), &image).await;
    let reference = format!("{}/test/app:v1", reg.addr);
    let mut args = vec!["vm", "run", "--rm"];
    args.extend(GuestHost::VM);
    args.push(&reference);
    let out = g.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from /srv/app as 1000\n");
    // -e overrides the image's variable; the image is found by its local name now.
    let mut args = vec!["vm", "run", "--rm", "-e", "GREETING=hi", "-u", "0"];
    args.extend(GuestHost::VM);
    args.push(&reference);
    let out = g.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi from /srv/app as 0\n");
}

#[tokio::test]
async fn exec_into_a_missing_vm_fails_with_advice() {
    let Some(g) = GuestHost::start().await else { return };
    let out = exec(&g, "ghost", &["true"]);
    assert_eq!(out.status.code(), Some(3), "not found: {}", stderr(&out));
    assert!(stderr(&out).contains("ghost"), "{}", stderr(&out));
}
