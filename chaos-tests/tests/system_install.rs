//! `banger system install|uninstall` with real users and groups (useradd), real unit checks
//! (`systemd-analyze verify` and `security --offline=yes`), and the socket group: a member uses
//! the daemon without sudo, a non-member is told how to join.
//!
//! Every user and group a test makes is named for the test's pid and removed by a guard, even
//! when the test fails.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chaos_tests::{DaemonOpts, TestDaemon, bin, capable, is_root, stderr, stdout};

/// Users and groups made by a test: removed on drop (users first, so their groups are free).
#[derive(Default)]
struct Accounts {
    users: Vec<String>,
    groups: Vec<String>,
}

impl Accounts {
    fn user(&mut self, name: String) -> String {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd {name}: {out:?}");
        self.users.push(name.clone());
        name
    }

    fn group(&mut self, name: String) -> String {
        let out = Command::new("groupadd").args(["--system", &name]).output().unwrap();
        assert!(out.status.success(), "groupadd {name}: {out:?}");
        self.groups.push(name.clone());
        name
    }

    /// A name `system install` will make: removed by the guard if the test fails before the
    /// uninstall does.
    fn expect_user(&mut self, name: String) -> String {
        self.users.push(name.clone());
        name
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for u in &self.users {
            if nix::unistd::User::from_name(u).ok().flatten().is_some() {
                let _ = Command::new("userdel").arg(u).output();
            }
            if nix::unistd::Group::from_name(u).ok().flatten().is_some() {
                let _ = Command::new("groupdel").arg(u).output();
            }
        }
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).output();
        }
    }
}

fn name(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

fn banger(args: &[&str]) -> Output {
    Command::new(bin("banger")).args(args).env("NO_COLOR", "1").output().unwrap()
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The host's account databases (not their `-` backups, which useradd and userdel rewrite),
/// without the entries of this binary's other tests, which run at the same time: `bgt` and a
/// letter and this pid, other than `mine`.
fn account_files(mine: &str) -> Vec<(String, Vec<String>)> {
    let pid = std::process::id().to_string();
    let others = |line: &str| {
        let name = line.split(':').next().unwrap_or_default();
        name != mine && name.starts_with("bgt") && name.get(4..) == Some(pid.as_str())
    };
    ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            (p.to_string(), text.lines().filter(|l| !others(l)).map(String::from).collect())
        })
        .collect()
}

fn systemd_analyze() -> bool {
    let present = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    capable("systemd", present, "systemd-analyze is not installed (apt-get install systemd)")
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = stdout(&out);
    text.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score for {}: {text}{}", unit.display(), stderr(&out)))
}

#[test]
fn install_into_a_root_writes_hardened_units_for_an_unprivileged_daemon() {
    if !capable("root", is_root(), "system install creates a user: needs root") {
        return;
    }
    let mut accounts = Accounts::default();
    let user = accounts.expect_user(name("bgti"));
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let out = banger(&["system", "install", "--root", r, "--user", &user, "--no-enable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("sudo usermod -aG {user} $USER")), "{}", stdout(&out));
    assert!(stdout(&out).contains("systemctl daemon-reload && systemctl enable --now"), "{}", stdout(&out));

    let u = nix::unistd::User::from_name(&user).unwrap().expect("the install made the user");
    assert_ne!(u.uid.as_raw(), 0);
    assert_eq!(u.shell, PathBuf::from("/usr/sbin/nologin"));
    assert_eq!(u.dir, PathBuf::from("/var/lib/banger"));

    let units = root.path().join("etc/systemd/system");
    let daemon = units.join("bangerd.service");
    let helper = units.join("banger-helper.service");
    let daemon_text = std::fs::read_to_string(&daemon).unwrap();
    let helper_text = std::fs::read_to_string(&helper).unwrap();
    assert!(daemon_text.contains(&format!("\nUser={user}\n")), "{daemon_text}");
    assert!(daemon_text.contains(&format!(" --group {user}")), "{daemon_text}");
    assert!(daemon_text.contains("\nNoNewPrivileges=yes\n"), "{daemon_text}");
    assert!(daemon_text.contains("\nCapabilityBoundingSet=\n"), "{daemon_text}");
    assert!(!helper_text.contains("\nUser="), "the helper runs as root: {helper_text}");
    assert!(helper_text.contains(&format!("--owner-uid {} ", u.uid)), "{helper_text}");
    assert!(helper_text.contains("\nCapabilityBoundingSet=CAP_NET_ADMIN "), "{helper_text}");

    // The state and cache dirs belong to the daemon's user; its group may read them.
    for dir in ["var/lib/banger", "var/cache/banger"] {
        let m = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.permissions().mode() & 0o777),
            (u.uid.as_raw(), u.gid.as_raw(), 0o750),
            "{dir}"
        );
    }
    for completion in [
        "usr/local/share/bash-completion/completions/banger",
        "usr/local/share/zsh/site-functions/_banger",
        "usr/local/share/fish/vendor_completions.d/banger.fish",
    ] {
        let text = std::fs::read_to_string(root.path().join(completion)).unwrap();
        assert!(text.contains("system"), "{completion} does not complete `system`");
    }
    // A man page per command, the same ones docs/man holds.
    let man = root.path().join("usr/local/share/man/man1");
    let committed = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/man")).unwrap().count();
    assert_eq!(std::fs::read_dir(&man).unwrap().count(), committed, "every page is installed");
    let page = std::fs::read_to_string(man.join("banger-vm-run.1")).unwrap();
    let committed_page = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/man/banger-vm-run.1");
    assert_eq!(
        page,
        std::fs::read_to_string(committed_page).unwrap(),
        "the installed page is the generated one"
    );

    if systemd_analyze() {
        for unit in [&daemon, &helper] {
            let out = Command::new("systemd-analyze").arg("verify").arg(unit).output().unwrap();
            let complaints: Vec<String> = stderr(&out)
                .lines()
                .filter(|l| l.contains(unit.to_str().unwrap()))
                .map(String::from)
                .collect();
            assert!(
                out.status.success() && complaints.is_empty(),
                "verify {}: {}",
                unit.display(),
                stderr(&out)
            );
        }
        let (d, h) = (exposure(&daemon), exposure(&helper));
        eprintln!("systemd-analyze security --offline=yes: bangerd {d}, banger-helper {h}");
        assert!(d <= 2.5, "bangerd.service exposure {d} is above 2.5");
        assert!(h <= 5.0, "banger-helper.service exposure {h} is above 5.0");
    }

    let out = banger(&["system", "uninstall", "--root", r, "--purge"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn install_then_uninstall_leaves_the_host_as_it_was() {
    if !capable("root", is_root(), "system install creates a user: needs root") {
        return;
    }
    let mut accounts = Accounts::default();
    let user = accounts.expect_user(name("bgtu"));
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    // Something of the administrator's in /etc/banger: the uninstall leaves it.
    std::fs::create_dir_all(root.path().join("etc/banger")).unwrap();
    std::fs::write(root.path().join("etc/banger/bangerd.toml"), "# mine\n").unwrap();
    let (files_before, accounts_before) = (tree(root.path()), account_files(&user));

    let out = banger(&["system", "install", "--root", r, "--user", &user, "--no-enable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(nix::unistd::User::from_name(&user).unwrap().is_some());
    assert!(nix::unistd::Group::from_name(&user).unwrap().is_some(), "its group is made too");
    assert_ne!(tree(root.path()), files_before);

    // Without --purge the state stays (and says so).
    let out = banger(&["system", "uninstall", "--root", r]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("--purge"), "{}", stdout(&out));
    assert!(root.path().join("var/lib/banger").is_dir());
    assert!(nix::unistd::User::from_name(&user).unwrap().is_none(), "the user it made is gone");
    assert!(nix::unistd::Group::from_name(&user).unwrap().is_none(), "its group is gone");
    assert!(!root.path().join("etc/systemd/system/bangerd.service").exists());

    // A second uninstall finds nothing to remove and says how to make an install.
    let out = banger(&["system", "uninstall", "--root", r, "--purge"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stderr(&out).contains("no system install under"), "{}", stderr(&out));

    // Install twice (the second finds the user made by the first, and another --user is
    // refused), then uninstall --purge: exactly the files and accounts of before.
    for _ in 0..2 {
        let out = banger(&["system", "install", "--root", r, "--user", &user, "--no-enable"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = banger(&["system", "install", "--root", r, "--user", "bgt-other", "--no-enable"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(stderr(&out).contains("uninstall it first"), "{}", stderr(&out));
    let out = banger(&["system", "uninstall", "--root", r, "--purge"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(root.path().join("var")).ok(); // what the first, unpurged, kept
    assert_eq!(tree(root.path()), files_before);
    assert_eq!(account_files(&user), accounts_before);
}

#[test]
fn install_keeps_a_user_it_did_not_make() {
    if !capable("root", is_root(), "creating users needs root") {
        return;
    }
    let mut accounts = Accounts::default();
    let user = accounts.user(name("bgtk"));
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let out = banger(&["system", "install", "--root", r, "--user", &user, "--no-enable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("using existing system user"), "{}", stdout(&out));
    let out = banger(&["system", "uninstall", "--root", r, "--purge"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(nix::unistd::User::from_name(&user).unwrap().is_some(), "an existing user is not removed");
}

#[test]
fn the_daemon_must_not_run_as_root() {
    if !capable("root", is_root(), "system install needs root") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = banger(&["system", "install", "--root", root.path().to_str().unwrap(), "--user", "root"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pick another name with --user"), "{}", stderr(&out));
    assert!(tree(root.path()).is_empty(), "nothing written: {:?}", tree(root.path()));
}

/// `runuser -u USER -- banger --state-dir DIR ARGS`: a login's groups (initgroups), no sudo.
fn banger_as(user: &str, d: &TestDaemon, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("BANGER_SOCKET")
        .env_remove("BANGER_STATE_DIR")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_member_of_the_socket_group_uses_banger_without_sudo_and_others_are_told_how_to_join() {
    if !capable("root", is_root(), "creating users and switching to them needs root") {
        return;
    }
    let mut accounts = Accounts::default();
    let group = accounts.group(name("bgtg"));
    let member = accounts.user(name("bgtm"));
    let outsider = accounts.user(name("bgto"));
    let out = Command::new("gpasswd").args(["--add", &member, &group]).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let opts = DaemonOpts { extra_args: vec!["--group".into(), group.clone()], ..Default::default() };
    let d = TestDaemon::start_with(opts).await;
    let m = std::fs::metadata(&d.socket).unwrap();
    let gid = nix::unistd::Group::from_name(&group).unwrap().unwrap().gid.as_raw();
    assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o660, gid), "socket 0660, group {group}");

    let out = banger_as(&member, &d, &["vm", "ls"]);
    assert!(out.status.success(), "a member of {group} is refused: {}", stderr(&out));

    let out = banger_as(&outsider, &d, &["vm", "ls"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains(&format!("sudo usermod -aG {group} $USER")), "the refusal says how to join: {err}");
}
