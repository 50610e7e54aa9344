//! `vm workspace copy|sync|pull`, `vm run --workspace` and the note `vm exec` prints, through
//! the real CLI, daemon, QEMU and a Debian guest with git; the host side is a real repository
//! driven by the host's git. Capabilities `qemu` and `debian` (see `chaos_tests::guests`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use chaos_tests::guests::GuestHost;
use chaos_tests::{stderr, stdout};

/// The host's git in `dir`, which must succeed; its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=host", "-c", "user.email=host@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn write(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A checkout with tracked files (one executable, a symlink), a tracked file deleted from the
/// work tree, untracked files, and ignored ones at several depths.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    git(top, &["init", "-q", "-b", "main"]);
    write(top, ".gitignore", "*.log\nbuild/\n");
    write(top, "README", "hello\n");
    write(top, "run.sh", "#!/bin/sh\necho run\n");
    std::fs::set_permissions(top.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("README", top.join("link")).unwrap();
    write(top, "src/lib.rs", "pub fn f() {}\n");
    write(top, "gone.txt", "soon gone\n");
    git(top, &["add", "-A"]);
    git(top, &["commit", "-qm", "first"]);
    std::fs::remove_file(top.join("gone.txt")).unwrap();
    write(top, "notes.txt", "untracked\n");
    write(top, "src/new.rs", "// untracked\n");
    for ignored in ["a.log", "src/b.log", "src/deep/c.log", "build/x", "build/sub/y", "build/sub/z"] {
        write(top, ignored, "ignored\n");
    }
    dir
}

fn guest(g: &GuestHost, vm: &str, command: &[&str]) -> std::process::Output {
    let mut args = vec!["vm", "exec", vm, "--"];
    args.extend(command);
    g.cli(&args)
}

fn guest_ok(g: &GuestHost, vm: &str, command: &[&str]) -> String {
    let out = guest(g, vm, command);
    assert!(out.status.success(), "{command:?}: {}", stderr(&out));
    stdout(&out)
}

#[tokio::test]
async fn a_checkout_is_copied_kept_in_step_and_its_guest_commits_come_back() {
    let Some(g) = GuestHost::start().await else { return };
    if g.import_debian().is_none() {
        return;
    }
    let dir = repo();
    let top = dir.path();
    let top_s = top.to_str().unwrap();

    // The preview: what goes, and the ignored files left out, counted per directory.
    let preview = g.ok(&["--json", "vm", "workspace", "copy", "none-needed", top_s, "--preview"]);
    let v: serde_json::Value = serde_json::from_str(&preview).unwrap();
    let mut files: Vec<&str> = v["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    files.sort();
    assert_eq!(files, [".gitignore", "README", "link", "notes.txt", "run.sh", "src/lib.rs", "src/new.rs"]);
    assert_eq!(
        v["ignored_by_dir"],
        serde_json::json!({ ".": 1, "build": 1, "build/sub": 2, "src": 1, "src/deep": 1 }),
        "{preview}"
    );
    let text = g.ok(&["vm", "workspace", "copy", "none-needed", top_s, "--preview"]);
    assert!(text.contains("would copy 7 file(s)") && text.contains("skipped 6 ignored file(s)"), "{text}");

    // vm run --workspace: booted, copied, recorded.
    let workspace_arg = format!("--workspace={top_s}");
    let mut args = vec!["vm", "run", "-d", "--name", "ws", &workspace_arg];
    args.extend(GuestHost::VM);
    args.push("debian");
    let out = g.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("copied 7 file(s)"), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&g.ok(&["vm", "inspect", "ws"])).unwrap();
    let head = git(top, &["rev-parse", "HEAD"]);
    assert_eq!(info["workspace"]["guest_dir"], "/workspace");
    assert_eq!(info["workspace"]["host_dir"], top.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(info["workspace"]["commit"], head.trim());

    // The guest's files, modes, symlink and git's view equal the host's.
    assert_eq!(guest_ok(&g, "ws", &["cat", "/workspace/src/new.rs"]), "// untracked\n");
    assert_eq!(guest_ok(&g, "ws", &["stat", "-c", "%a %U", "/workspace/run.sh"]), "755 root\n");
    assert_eq!(guest_ok(&g, "ws", &["readlink", "/workspace/link"]), "README\n");
    let absent = guest(&g, "ws", &["ls", "/workspace/a.log", "/workspace/build", "/workspace/gone.txt"]);
    assert_eq!(stdout(&absent), "", "ignored and deleted files stay out");
    let status = |g: &GuestHost| guest_ok(g, "ws", &["git", "-C", "/workspace", "status", "--porcelain"]);
    assert_eq!(status(&g), git(top, &["status", "--porcelain"]));
    let out = guest(&g, "ws", &["true"]);
    assert_eq!(stderr(&out), "", "no note while nothing changed");

    // A change on the host: one line on stderr from vm exec.
    write(top, "README", "hello again\n");
    let out = guest(&g, "ws", &["true"]);
    assert!(out.status.success());
    assert_eq!(
        stderr(&out),
        "banger: workspace changed since copy: 1 modified, 0 new, 0 deleted — banger vm workspace sync ws\n"
    );
    // vm ssh says the same before it hands over to ssh.
    let out = g.command(&["vm", "ssh", "ws", "--", "true"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("banger: workspace changed since copy: 1 modified"),
        "vm ssh warns too: {}",
        stderr(&out)
    );

    // A host commit, a deletion and a new file; sync brings the guest level.
    git(top, &["rm", "-q", "src/lib.rs"]);
    git(top, &["commit", "-qam", "host commit"]);
    write(top, "later.txt", "new on the host\n");
    let out = g.ok(&["vm", "workspace", "sync", "ws"]);
    assert!(out.contains("1 modified, 1 new, 1 deleted"), "{out}");
    assert_eq!(stderr(&guest(&g, "ws", &["true"])), "", "the note is gone after a sync");
    assert_eq!(guest_ok(&g, "ws", &["cat", "/workspace/README"]), "hello again\n");
    assert_eq!(guest_ok(&g, "ws", &["cat", "/workspace/later.txt"]), "new on the host\n");
    assert!(
        !guest(&g, "ws", &["test", "-e", "/workspace/src/lib.rs"]).status.success(),
        "deleted in the guest"
    );
    let log = guest_ok(&g, "ws", &["git", "-C", "/workspace", "log", "--format=%s"]);
    assert_eq!(log, "host commit\nfirst\n");
    assert_eq!(status(&g), git(top, &["status", "--porcelain"]));
    assert!(g.ok(&["vm", "workspace", "sync", "ws"]).contains("up to date"));

    // A commit in the guest comes back as a branch; the host's HEAD and work tree stay.
    let host_head = git(top, &["rev-parse", "HEAD"]);
    let host_status = git(top, &["status", "--porcelain"]);
    guest_ok(
        &g,
        "ws",
        &[
            "sh",
            "-c",
            "cd /workspace && echo from the guest > guest.txt && git add guest.txt && \
             git -c user.name=guest -c user.email=guest@example.com commit -qm 'guest commit'",
        ],
    );
    let out = g.cli(&["vm", "workspace", "pull", "ws", "--branch", "main"]);
    assert!(!out.status.success(), "the checked-out branch is never overwritten");
    assert!(stderr(&out).contains("checked out"), "{}", stderr(&out));
    let pulled = g.ok(&["vm", "workspace", "pull", "ws"]);
    assert!(pulled.starts_with("1 commit(s) from ws now on branch banger/ws"), "{pulled}");
    assert_eq!(git(top, &["log", "--format=%s", "-1", "banger/ws"]), "guest commit\n");
    assert_eq!(git(top, &["show", "banger/ws:guest.txt"]), "from the guest\n");
    assert_eq!(git(top, &["rev-parse", "HEAD"]), host_head, "HEAD untouched");
    assert_eq!(git(top, &["status", "--porcelain"]), host_status, "work tree untouched");
    assert!(!top.join("guest.txt").exists());
    g.ok(&["vm", "rm", "-f", "ws"]);
}

#[tokio::test]
async fn pulling_from_a_guest_without_git_says_the_image_needs_git() {
    let Some(g) = GuestHost::start().await else { return };
    let dir = repo();
    g.run_detached("nogit");
    let out = g.ok(&["vm", "workspace", "copy", "nogit", dir.path().to_str().unwrap(), "--to", "/srv/w"]);
    assert!(out.contains("copied 7 file(s)") && out.contains("nogit:/srv/w"), "{out}");
    assert_eq!(g.ok(&["vm", "exec", "nogit", "--", "cat", "/srv/w/README"]), "hello\n");
    let out = g.cli(&["vm", "workspace", "pull", "nogit"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has no git"), "{}", stderr(&out));
    g.ok(&["vm", "rm", "-f", "nogit"]);
}
