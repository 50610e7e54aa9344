//! The agent's SSH side as host processes, driven by Debian's real OpenSSH client (`ssh`,
//! `scp`, `sftp`, `ssh-keygen`): the built-in server (`banger-agent ssh-server`) on a free
//! loopback port, and the agent's `Ssh` request installing keys and starting a server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::agent::{TestAgent, agent_bin};
use chaos_tests::protocol::agent::{AgentEvent, AgentRequest, SshSetup};
use chaos_tests::{capable, is_root};

const T: Duration = Duration::from_secs(20);

fn have_openssh() -> bool {
    capable(
        "openssh",
        Command::new("ssh").arg("-V").output().is_ok_and(|o| o.status.success()),
        "OpenSSH's client is not installed (apt-get install openssh-client)",
    )
}

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`).
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn public(path: &Path) -> String {
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The client's side: keys and a known_hosts file that trusts exactly one host key.
struct Client {
    dir: tempfile::TempDir,
    port: u16,
    key: PathBuf,
}

impl Client {
    fn new(port: u16, host_key_pub: &str) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client");
        keygen(&key);
        let c = Client { dir, port, key };
        c.trust(host_key_pub);
        c
    }

    /// known_hosts holds `host_key_pub` as the key of [127.0.0.1]:port.
    fn trust(&self, host_key_pub: &str) {
        let line = format!("[127.0.0.1]:{} {host_key_pub}\n", self.port);
        std::fs::write(self.dir.path().join("known_hosts"), line).unwrap();
    }

    fn options(&self, key: &Path) -> Vec<String> {
        let known = self.dir.path().join("known_hosts");
        let mut o: Vec<String> = [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        o.push(format!("UserKnownHostsFile={}", known.display()));
        o.push("-i".into());
        o.push(key.display().to_string());
        o
    }

    /// `ssh -p PORT [extra…] root@127.0.0.1 [command…]`.
    fn ssh(&self, extra: &[&str], command: &[&str]) -> Command {
        self.ssh_with_key(&self.key, extra, command)
    }

    fn ssh_with_key(&self, key: &Path, extra: &[&str], command: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.options(key)).arg("-p").arg(self.port.to_string()).args(extra);
        c.arg("root@127.0.0.1").args(command);
        c.stdin(Stdio::null());
        c
    }

    fn scp(&self, from: &str, to: &str) -> Output {
        let mut c = Command::new("scp");
        c.args(self.options(&self.key)).arg("-P").arg(self.port.to_string()).args([from, to]);
        c.stdin(Stdio::null()).output().unwrap()
    }

    /// Runs an `sftp -b` batch.
    fn sftp(&self, batch: &str) -> Output {
        let file = self.dir.path().join("batch");
        std::fs::write(&file, batch).unwrap();
        let mut c = Command::new("sftp");
        c.args(self.options(&self.key)).arg("-P").arg(self.port.to_string()).arg("-b").arg(&file);
        c.arg("root@127.0.0.1").stdin(Stdio::null()).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `banger-agent ssh-server` on a free loopback port; killed when dropped.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    client: Client,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        keygen(&host);
        let port = free_port();
        let client = Client::new(port, &public(&host));
        std::fs::write(dir.path().join("authorized_keys"), format!("{}\n", public(&client.key))).unwrap();
        let child = Command::new(agent_bin())
            .args(["ssh-server", "--address", "127.0.0.1", "--port", &port.to_string(), "--host-key"])
            .arg(&host)
            .arg("--authorized-keys")
            .arg(dir.path().join("authorized_keys"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port);
        Server { dir, port, child, client }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exec_gives_exit_codes_and_the_three_streams() {
    if !have_openssh() {
        return;
    }
    let s = Server::start();
    let out = s.client.ssh(&[], &["echo out; echo err >&2; exit 7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"), "{}", text(&out.stderr));

    // stdin, more than a channel window's worth, back through wc.
    let data = chaos_tests::noise(3 << 20, 9);
    let mut child =
        s.client.ssh(&[], &["cat | wc -c"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), (3 << 20).to_string());

    // A login environment from /etc/passwd (root's shell and home on this host too).
    let out = s.client.ssh(&[], &["echo $USER:$HOME:$SHELL:$(pwd)"]).output().unwrap();
    let root = chaos_tests_passwd_root();
    assert_eq!(text(&out.stdout).trim(), format!("root:{}:{}:{}", root.0, root.1, root.0));

    // A process killed by a signal: ssh says so with its 255.
    let out = s.client.ssh(&[], &["kill -TERM $$"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));

    // A background child holding stdout does not hold the session.
    let started = Instant::now();
    // (Not "sleep 3…": agent_protocol looks for those.)
    let out = s.client.ssh(&[], &["sleep 6 & echo bg"]).output().unwrap();
    assert_eq!(text(&out.stdout), "bg\n");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Only locale and terminal variables are taken from the client.
    let out = s
        .client
        .ssh(&["-o", "SendEnv=LANG", "-o", "SendEnv=LD_PRELOAD"], &["echo \"$LANG|$LD_PRELOAD\""])
        .env("LANG", "C.UTF-8")
        .env("LD_PRELOAD", "/nonexistent.so")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "C.UTF-8|\n", "{}", text(&out.stderr));
}

/// root's home and shell in this host's /etc/passwd.
fn chaos_tests_passwd_root() -> (String, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let uid = nix::unistd::geteuid().as_raw().to_string();
    let line = passwd.lines().find(|l| l.split(':').nth(2) == Some(uid.as_str())).expect("our passwd entry");
    let f: Vec<&str> = line.split(':').collect();
    (f[5].to_string(), f[6].to_string())
}

#[test]
fn a_pty_session_has_a_terminal_of_its_own() {
    if !have_openssh() || !capable("root", is_root(), "the server serves the user it runs as: root") {
        return;
    }
    let s = Server::start();
    let out = s
        .client
        .ssh(
            &["-tt"],
            &["stty rows 33 cols 101; stty size; test -t 0 && echo is-a-tty; echo term=$TERM; \
               set -- $(cat /proc/$$/stat); echo ctty=$7"],
        )
        .env("TERM", "xterm-banger")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("33 101"), "{stdout:?}");
    assert!(stdout.contains("is-a-tty"), "{stdout:?}");
    assert!(stdout.contains("term=xterm-banger"), "the pty request's TERM: {stdout:?}");
    assert!(stdout.contains("ctty=") && !stdout.contains("ctty=0"), "a controlling terminal: {stdout:?}");

    // An interactive login shell, fed through the terminal; its exit code comes back.
    let mut child = s.client.ssh(&["-tt"], &[]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"echo login=$0; exit 5\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("login=-"), "a login shell: {}", text(&out.stdout));
}

/// Waits until what `buf` collected contains `needle`.
fn wait_for(buf: &std::sync::Mutex<Vec<u8>>, needle: &str) {
    let deadline = Instant::now() + T;
    while !text(&buf.lock().unwrap()).contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {:?}", text(&buf.lock().unwrap()));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_resized_client_terminal_resizes_the_session_s() {
    use std::os::fd::AsRawFd;
    if !have_openssh() || !capable("root", is_root(), "the server serves the user it runs as: root") {
        return;
    }
    let s = Server::start();
    // ssh on a terminal of its own, as a user's would be.
    let size = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = pty.slave;
    let mut cmd = s.client.ssh(&["-t"], &["stty size; read line; stty size; read line"]);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and an ioctl on the child's own stdin, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let master = std::fs::File::from(pty.master);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (mut reader, sink) = (master.try_clone().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    wait_for(&seen, "24 80");
    // The terminal changes size: ssh gets SIGWINCH and sends window-change.
    let bigger = libc::winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own, on a terminal we own.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &bigger) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    (&master).write_all(b"\r").unwrap();
    wait_for(&seen, "33 101");
    (&master).write_all(b"\r").unwrap();
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ssh did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn scp_and_sftp_carry_files_both_ways() {
    if !have_openssh() {
        return;
    }
    let s = Server::start();
    let local = s.client.dir.path();
    let remote = s.dir.path(); // the "guest" side: the same host here
    let data = chaos_tests::noise(5 << 20, 21);
    std::fs::write(local.join("up"), &data).unwrap();

    let out = s
        .client
        .scp(local.join("up").to_str().unwrap(), &format!("root@127.0.0.1:{}/scp-up", remote.display()));
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    assert!(std::fs::read(remote.join("scp-up")).unwrap() == data, "scp up: equal contents");
    let out = s.client.scp(
        &format!("root@127.0.0.1:{}/scp-up", remote.display()),
        local.join("scp-down").to_str().unwrap(),
    );
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert!(std::fs::read(local.join("scp-down")).unwrap() == data, "scp down: equal contents");

    let r = remote.display();
    let l = local.display();
    let batch = format!(
        "mkdir {r}/d\nput {l}/up {r}/d/x\nls -l {r}/d\nrename {r}/d/x {r}/d/y\nchmod 640 {r}/d/y\n\
         get {r}/d/y {l}/sftp-down\nsymlink {r}/d/y {r}/d/link\nls {r}/d\nrm {r}/d/y\nrm {r}/d/link\nrmdir {r}/d\n"
    );
    let out = s.client.sftp(&batch);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("-rw-r--r--") && stdout.contains(&(5u32 << 20).to_string()), "ls -l: {stdout}");
    assert!(stdout.contains("link"), "{stdout}");
    assert!(std::fs::read(local.join("sftp-down")).unwrap() == data, "sftp get: equal contents");
    assert!(!remote.join("d").exists(), "rm and rmdir worked");

    // A failure is an error the client reports, not a broken session.
    let out = s.client.sftp(&format!("get {r}/no-such-file {l}/x\n"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}

#[test]
fn direct_tcpip_reaches_a_local_listener() {
    if !have_openssh() {
        return;
    }
    let s = Server::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(format!("pong:{}", text(&got)).as_bytes()).unwrap();
    });
    let mut child = s
        .client
        .ssh(&["-W", &format!("localhost:{target}")], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping").unwrap(); // then closed: end-of-file
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "pong:ping", "{}", text(&out.stderr));

    // Nothing listening: the channel is refused and ssh says so.
    let out = s.client.ssh(&["-W", &format!("127.0.0.1:{}", free_port())], &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("open failed"), "{}", text(&out.stderr));
}

#[test]
fn wrong_keys_and_agent_forwarding_are_refused() {
    if !have_openssh() {
        return;
    }
    let s = Server::start();
    // A client key that is not in authorized_keys.
    let other = s.client.dir.path().join("other");
    keygen(&other);
    let out = s.client.ssh_with_key(&other, &[], &["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Permission denied (publickey)"), "{}", text(&out.stderr));
    // Another user than the one the server runs as.
    let out = Command::new("ssh")
        .args(s.client.options(&s.client.key))
        .args(["-p", &s.port.to_string(), "nobody@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));

    // The client expects another host key: it refuses to go on.
    let liar = s.client.dir.path().join("liar");
    keygen(&liar);
    s.client.trust(&public(&liar));
    let out = s.client.ssh(&[], &["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Host key verification failed"), "{}", text(&out.stderr));
    s.client.trust(&public(&s.dir.path().join("host")));

    // Agent forwarding: a real agent on the client side, asked for with -A; none in the session.
    let sock = s.client.dir.path().join("agent.sock");
    let mut agent =
        Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + T;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out =
        s.client.ssh(&["-A"], &["echo sock=$SSH_AUTH_SOCK"]).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "sock=\n", "no agent socket in the session");
    // Remote forwarding is refused too (ssh -R fails when it must succeed).
    let out = s
        .client
        .ssh(
            &["-o", "ExitOnForwardFailure=yes", "-R", &format!("127.0.0.1:{}:127.0.0.1:22", free_port())],
            &["true"],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
}

#[test]
fn many_sessions_are_served_at_once() {
    if !have_openssh() {
        return;
    }
    let s = Server::start();
    let started = Instant::now();
    let children: Vec<Child> = (0..8)
        .map(|i| s.client.ssh(&[], &[&format!("sleep 1; echo {i}")]).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    assert!(started.elapsed() < Duration::from_secs(4), "in parallel: {:?}", started.elapsed());
}

// --- The agent's Ssh request ---

/// An agent whose ssh setup writes under `root` and serves on `port`.
fn ssh_agent(root: &Path, port: u16) -> TestAgent {
    TestAgent::start_with(&[
        OsStr::new("--ssh-root"),
        root.as_os_str(),
        OsStr::new("--ssh-port"),
        OsStr::new(&port.to_string()),
    ])
}

fn ssh_request(c: &mut chaos_tests::agent::AgentConn, host_key: &Path, authorized: &[String]) -> AgentEvent {
    c.send(&AgentRequest::Ssh(SshSetup {
        host_key: std::fs::read_to_string(host_key).unwrap(),
        authorized_keys: authorized.to_vec(),
    }));
    c.recv(T).expect("an answer")
}

fn pid_in(root: &Path) -> i32 {
    std::fs::read_to_string(root.join("run/banger/ssh-server.pid")).unwrap().trim().parse().unwrap()
}

#[test]
fn the_ssh_request_installs_keys_and_supervises_the_built_in_server() {
    if !have_openssh() || !capable("root", is_root(), "the server serves the user it runs as: root") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("run/banger")).unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/home/admin:/bin/sh\n").unwrap();
    let port = free_port();
    let agent = ssh_agent(r, port);
    let keys = tempfile::tempdir().unwrap();
    let host = keys.path().join("host");
    keygen(&host);
    let client = Client::new(port, &public(&host));
    let mut c = agent.connect();

    // Bad requests are refused with what to send.
    let bad = std::fs::write(keys.path().join("bad"), "not a key");
    bad.unwrap();
    match ssh_request(&mut c, &keys.path().join("bad"), &[public(&client.key)]) {
        AgentEvent::Error { id: None, error } => assert!(error.message.contains("ssh-keygen"), "{error:?}"),
        other => panic!("{other:?}"),
    }

    let started = Instant::now();
    let answer = ssh_request(&mut c, &host, &[public(&client.key)]);
    assert_eq!(answer, AgentEvent::Ssh { server: "banger-agent".into() });
    eprintln!("Ssh answered in {:?}", started.elapsed());
    let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("etc/ssh/ssh_host_ed25519_key"), 0o600);
    assert_eq!(mode("home/admin/.ssh"), 0o700, "root's home from the image's passwd");
    assert_eq!(mode("home/admin/.ssh/authorized_keys"), 0o600);
    // The built-in server reads the host's /etc/passwd for the login: fine, both are root.
    let out = client.ssh(&[], &["echo hello"]).output().unwrap();
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));

    // Again (after every Ready): the same server is left alone.
    let pid = pid_in(r);
    assert_eq!(ssh_request(&mut c, &host, &[public(&client.key)]), answer);
    assert_eq!(pid_in(r), pid, "not restarted");
    // A new session (a daemon restart) too.
    drop(c);
    let mut c = agent.connect();
    assert_eq!(ssh_request(&mut c, &host, &[public(&client.key)]), answer);
    assert_eq!(pid_in(r), pid, "not restarted");

    // Killed: the supervisor starts it again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let out = client.ssh(&[], &["echo back"]).output().unwrap();
        if text(&out.stdout) == "back\n" {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(pid_in(r), pid);

    // A new host key: the server restarts with it, and the client that trusts it gets in.
    let host2 = keys.path().join("host2");
    keygen(&host2);
    assert_eq!(ssh_request(&mut c, &host2, &[public(&client.key)]), answer);
    client.trust(&public(&host2));
    let out = client.ssh(&[], &["echo new-key"]).output().unwrap();
    assert_eq!(text(&out.stdout), "new-key\n", "{}", text(&out.stderr));
    // A key removed from the list no longer gets in.
    assert_eq!(ssh_request(&mut c, &host2, &[]), answer);
    let out = client.ssh(&[], &["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
}

#[test]
fn the_ssh_request_runs_the_image_s_sshd_with_banger_s_config() {
    if !have_openssh() || !capable("root", is_root(), "the server serves the user it runs as: root") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let port = free_port();
    // A stand-in for OpenSSH's sshd: it records how it was started, then serves with the
    // built-in server on the files the request installed.
    std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
    let sshd = r.join("usr/sbin/sshd");
    std::fs::write(
        &sshd,
        format!(
            "#!/bin/sh\necho \"$@\" > {r}/sshd-args\nexec {agent} ssh-server --port {port} --host-key \
             {r}/etc/ssh/ssh_host_ed25519_key --authorized-keys {r}/root/.ssh/authorized_keys\n",
            r = r.display(),
            agent = agent_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&sshd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = ssh_agent(r, port);
    let keys = tempfile::tempdir().unwrap();
    let host = keys.path().join("host");
    keygen(&host);
    let client = Client::new(port, &public(&host));
    let mut c = agent.connect();
    assert_eq!(
        ssh_request(&mut c, &host, &[public(&client.key)]),
        AgentEvent::Ssh { server: "openssh /usr/sbin/sshd".into() }
    );
    let config = r.join("run/banger/sshd_config");
    let args = std::fs::read_to_string(r.join("sshd-args")).unwrap();
    assert_eq!(args.trim(), format!("-D -e -f {}", config.display()));
    let config = std::fs::read_to_string(config).unwrap();
    assert!(config.contains(&format!("Port {port}\n")), "{config}");
    assert!(config.contains("PasswordAuthentication no\n"), "{config}");
    assert!(r.join("run/sshd").is_dir(), "sshd's privilege separation directory");
    let out = client.ssh(&[], &["echo via-sshd"]).output().unwrap();
    assert_eq!(text(&out.stdout), "via-sshd\n", "{}", text(&out.stderr));

    // The agent's server process dies and another one starts (as PID 1 would): the new one
    // replaces the server the old one left, and serves again.
    let old = pid_in(r);
    drop(c);
    // Killed outright, as a crash would: its server lives on, no longer supervised.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    drop(agent);
    assert!(std::path::Path::new(&format!("/proc/{old}")).exists(), "the old server outlived its agent");
    let agent = ssh_agent(r, port);
    let mut c = agent.connect();
    assert_eq!(
        ssh_request(&mut c, &host, &[public(&client.key)]),
        AgentEvent::Ssh { server: "openssh /usr/sbin/sshd".into() }
    );
    assert_ne!(pid_in(r), old);
    let out = client.ssh(&[], &["echo again"]).output().unwrap();
    assert_eq!(text(&out.stdout), "again\n", "{}", text(&out.stderr));
}

#[test]
fn a_host_process_agent_without_ssh_root_refuses_ssh() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    c.send(&AgentRequest::Ssh(SshSetup { host_key: String::new(), authorized_keys: vec![] }));
    match c.recv(T) {
        Some(AgentEvent::Error { id: None, error }) => {
            assert!(error.message.contains("--ssh-root"), "{error:?}")
        }
        other => panic!("{other:?}"),
    }
}
