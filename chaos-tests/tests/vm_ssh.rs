//! ssh into VMs with Debian's OpenSSH client, first try, host keys pinned: against an image
//! with OpenSSH's sshd (the Debian image, which has rsync too) and one without (busybox: the
//! agent's built-in server). Capabilities `qemu` and `debian`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chaos_tests::guests::GuestHost;
use chaos_tests::{noise, stderr, stdout};

/// The system's ssh tool `tool` with `config` (banger's Include in a fresh ~/.ssh/config).
fn openssh(tool: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(tool)
        .arg("-F")
        .arg(config)
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=60"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool} (apt-get install openssh-client): {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}\n{}", stderr(&out), stdout(&out));
    stdout(&out)
}

fn inspect(g: &GuestHost, vm: &str) -> serde_json::Value {
    serde_json::from_str(&g.ok(&["vm", "inspect", vm])).unwrap()
}

/// `banger ssh-config` with `home` as HOME.
fn ssh_config(g: &GuestHost, home: &Path, action: &str) -> String {
    let out = g.command(&["ssh-config", action]).env("HOME", home).output().unwrap();
    ok(out, &format!("ssh-config {action}"))
}

fn run_detached(g: &GuestHost, name: &str, image: &str, extra: &[&str]) {
    let mut args = vec!["vm", "run", "-d", "--name", name];
    args.extend(extra);
    args.push(image);
    g.ok(&args);
}

/// scp and sftp a file up and back down; the bytes come back the same.
fn copy_both_ways(config: &Path, host: &str, dir: &Path) {
    let data = noise(300 << 10, host.len() as u64);
    let (up, down, down2) = (dir.join(format!("{host}.up")), dir.join("scp.down"), dir.join("sftp.down"));
    std::fs::write(&up, &data).unwrap();
    let up_s = up.to_str().unwrap();
    ok(openssh("scp", config, &[up_s, &format!("{host}:/tmp/scp-up")]), "scp up");
    ok(openssh("scp", config, &[&format!("{host}:/tmp/scp-up"), down.to_str().unwrap()]), "scp down");
    assert_eq!(std::fs::read(&down).unwrap(), data, "scp round trip");
    let batch = dir.join("batch");
    let script = format!(
        "put {up_s} /tmp/sftp-up\nls -l /tmp/sftp-up\nmkdir /tmp/sftp-dir\nrename /tmp/sftp-up /tmp/sftp-dir/f\nget /tmp/sftp-dir/f {}\nrm /tmp/sftp-dir/f\nrmdir /tmp/sftp-dir\n",
        down2.display()
    );
    std::fs::write(&batch, script).unwrap();
    ok(openssh("sftp", config, &["-b", batch.to_str().unwrap(), host]), "sftp batch");
    assert_eq!(std::fs::read(&down2).unwrap(), data, "sftp round trip");
    let left = ok(openssh("ssh", config, &[host, "ls", "/tmp"]), "ls /tmp");
    assert!(!left.contains("sftp-dir"), "sftp's rm and rmdir worked: {left}");
}

/// rsync over ssh (the image has rsync, as rsync needs on both ends): a tree up, a change, and
/// back down; only the change travels the second time.
fn rsync_both_ways(config: &Path, host: &str, dir: &Path) {
    let (tree, back) = (dir.join("tree"), dir.join("tree.back"));
    for (path, n) in [("a/one", 10 << 10), ("a/b/two", 200 << 10), ("three", 1)] {
        std::fs::create_dir_all(tree.join(path).parent().unwrap()).unwrap();
        std::fs::write(tree.join(path), noise(n, n as u64)).unwrap();
    }
    let rsh = format!("ssh -F {} -o BatchMode=yes", config.display());
    let rsync = |args: &[&str]| {
        let out = Command::new("rsync").args(["-a", "--stats", "-e", &rsh]).args(args).output().unwrap();
        ok(out, &format!("rsync {args:?}"))
    };
    rsync(&[&format!("{}/", tree.display()), &format!("{host}:/srv/tree/")]);
    std::fs::write(tree.join("three"), "changed\n").unwrap();
    let stats = rsync(&[&format!("{}/", tree.display()), &format!("{host}:/srv/tree/")]);
    assert!(stats.contains("Number of regular files transferred: 1"), "only the change goes: {stats}");
    rsync(&[&format!("{host}:/srv/tree/"), &format!("{}/", back.display())]);
    for path in ["a/one", "a/b/two", "three"] {
        assert_eq!(
            std::fs::read(back.join(path)).unwrap(),
            std::fs::read(tree.join(path)).unwrap(),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_scp_and_sftp_work_first_try_against_sshd_and_the_builtin_server() {
    let Some(g) = GuestHost::start().await else { return };
    let Some(()) = g.import_debian() else { return };
    run_detached(&g, "deb", "debian", &GuestHost::VM);
    run_detached(&g, "bb", "busybox", &GuestHost::VM);

    let home = tempfile::tempdir().unwrap();
    let said = ssh_config(&g, home.path(), "install");
    assert!(said.contains("added"), "{said}");
    let user_config: PathBuf = home.path().join(".ssh/config");
    let installed = std::fs::read_to_string(&user_config).unwrap();
    assert_eq!(installed.lines().filter(|l| l.starts_with("Include ")).count(), 1, "{installed}");
    assert!(ssh_config(&g, home.path(), "install").contains("already"), "idempotent");
    assert_eq!(std::fs::read_to_string(&user_config).unwrap(), installed);

    for (vm, server) in [("deb", "openssh /usr/sbin/sshd"), ("bb", "banger-agent")] {
        let host = format!("{vm}.banger");
        // The first connection of all is verified (StrictHostKeyChecking yes, no prompt).
        let out = g.command(&["vm", "ssh", vm, "--", "uname", "-a"]).output().unwrap();
        let uname = ok(out, &format!("vm ssh {vm}"));
        assert!(uname.starts_with("Linux "), "{uname}");
        assert_eq!(inspect(&g, vm)["ssh"]["server"], server, "which server {vm} runs");

        let whoami = ok(openssh("ssh", &user_config, &[&host, "id", "-u"]), "plain ssh through the Include");
        assert_eq!(whoami.trim(), "0");
        let out = openssh("ssh", &user_config, &[&host, "exit", "3"]);
        assert_eq!(out.status.code(), Some(3), "the remote exit status: {}", stderr(&out));
        copy_both_ways(&user_config, &host, home.path());
    }
    rsync_both_ways(&user_config, "deb.banger", home.path());

    // A host key other than the one banger pinned is refused.
    let known = g.host.daemon.dir.path().join("ssh/known_hosts");
    let pinned = std::fs::read_to_string(&known).unwrap();
    let key = |vm: &str| {
        let line = pinned.lines().find(|l| l.starts_with(&format!("{vm}.banger "))).unwrap();
        line.split_once(' ').unwrap().1.to_string()
    };
    std::fs::write(&known, format!("deb.banger {}\nbb.banger {}\n", key("bb"), key("deb"))).unwrap();
    let out = openssh("ssh", &user_config, &["deb.banger", "true"]);
    assert!(!out.status.success(), "a changed host key must be refused");
    assert!(stderr(&out).contains("Host key verification failed"), "{}", stderr(&out));
    std::fs::write(&known, &pinned).unwrap();

    // A removed VM's entry is gone from both files.
    g.ok(&["vm", "rm", "-f", "bb"]);
    let config = std::fs::read_to_string(g.host.daemon.dir.path().join("ssh/config")).unwrap();
    assert!(!config.contains("bb.banger") && config.contains("Host deb.banger"), "{config}");
    let known_now = std::fs::read_to_string(&known).unwrap();
    assert!(!known_now.contains("bb.banger") && known_now.contains("deb.banger"), "{known_now}");

    // Uninstall removes exactly its line: the file banger made goes; a user's own stays as it was.
    assert!(ssh_config(&g, home.path(), "uninstall").contains("removed"));
    assert!(!user_config.exists(), "banger made the file, and took it away with its line");
    let mine = "Host *\n    ServerAliveInterval 30\n# keep me\nHost x\n\tUser y";
    std::fs::write(&user_config, mine).unwrap();
    ssh_config(&g, home.path(), "install");
    assert!(std::fs::read_to_string(&user_config).unwrap().ends_with(mine));
    ssh_config(&g, home.path(), "uninstall");
    assert_eq!(std::fs::read_to_string(&user_config).unwrap(), mine, "byte for byte");
}

/// The second way in: the VM's own address, for tools that cannot run a ProxyCommand; the same
/// pinned host key. A pty (`-t`) gets the terminal's size.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_reaches_a_networked_vm_at_its_address_with_the_same_pinned_key() {
    let Some(g) = GuestHost::start().await else { return };
    run_detached(&g, "net", "busybox", &["--vmm", "qemu", "--cpus", "1", "--memory", "256"]);
    let out = g.command(&["vm", "ssh", "--direct", "net", "--", "hostname"]).output().unwrap();
    assert_eq!(ok(out, "vm ssh --direct").trim(), "net");
    let config = g.host.daemon.dir.path().join("ssh/config");
    let out = openssh(
        "ssh",
        &config,
        &["-tt", "net.direct.banger", "stty", "cols", "91", "rows", "33", ";", "stty", "size"],
    );
    assert!(ok(out, "a pty over the direct way").contains("33 91"));
    let ip = inspect(&g, "net")["spec"]["ip"].as_str().unwrap().to_string();
    assert!(std::fs::read_to_string(&config).unwrap().contains(&format!("HostName {ip}")));

    let out = g.command(&["vm", "ssh", "--direct", "nosuch"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no VM named"), "{}", stderr(&out));
}
