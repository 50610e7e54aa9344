//! `banger vm workspace copy|sync|pull`, `vm run --workspace`, and the one-line note `vm exec`
//! and `vm ssh` print when the host's checkout changed since it was copied. The files go as a
//! tar stream through `VmCopyIn`; what was copied is recorded in the VM (`VmWorkspaceSet`) as
//! HEAD and a git tree of the work tree, so a later command compares two trees instead of
//! reading files.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::daemon::Request;
use protocol::exec::{ExecEvent, ExecInput, ExecSpec, OutputStream};
use protocol::vm::{VmInfo, Workspace};
use protocol::{Error, ErrorKind};
use serde_json::json;

use crate::args::{Global, WorkspaceCommand};
use crate::client;
use crate::commands::cp::send_tar;
use crate::commands::vm::vm;
use crate::escape::escape;
use crate::output::Output;
use crate::progress::human_bytes;
use crate::session::{Ending, STDIN_CHUNK, Session};
use crate::workspace::git::{self, Changes};
use crate::workspace::pack::{self, Item, Plan};

/// The protocol version that brought workspace records.
const WORKSPACE_SINCE: u32 = 6;

/// What commands in the guest get as their environment.
const GUEST_ENV: [&str; 2] =
    ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"];

pub async fn run(global: &Global, cmd: WorkspaceCommand, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    match cmd {
        WorkspaceCommand::Copy { name, dir, to, preview } => {
            let top = top_of(dir.as_deref())?;
            if preview {
                return show_preview(&top, out);
            }
            let info = inspect(&socket, &name).await?;
            require_running(&info)?;
            let copied = copy(&socket, &name, &top, &to, out.json).await?;
            report_copy(out, &name, &copied);
        }
        WorkspaceCommand::Sync { name, preview } => sync(&socket, &name, preview, out).await?,
        WorkspaceCommand::Pull { name, branch } => pull(&socket, &name, branch, out).await?,
    }
    Ok(())
}

/// The checkout's top directory, absolute.
pub fn top_of(dir: Option<&Path>) -> Result<PathBuf, Error> {
    let dir = dir.unwrap_or(Path::new("."));
    git::toplevel(dir)
}

async fn inspect(socket: &Path, name: &str) -> Result<VmInfo, Error> {
    let mut c = client::connect(socket).await?;
    client::require(&c, WORKSPACE_SINCE, "workspaces")?;
    vm(&mut c, socket, Request::VmInspect { name: name.to_string() }).await
}

fn require_running(info: &VmInfo) -> Result<(), Error> {
    if info.state != protocol::vm::VmState::Running {
        return Err(Error::new(ErrorKind::Conflict, format!("VM {} is {}", info.name, info.state))
            .with_hint(format!("start it first: banger vm start {}", info.name)));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a copy or a sync did, for its report.
pub struct Copied {
    pub workspace: Workspace,
    pub files: usize,
    pub bytes: u64,
    pub git_bytes: u64,
    pub deleted: usize,
    pub took: std::time::Duration,
}

/// A bar on a terminal (bytes of the tar stream, rate, time left); nothing otherwise.
fn bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// zstd's fastest level: it keeps well ahead of the guest's channel.
const ZSTD_LEVEL: i32 = 1;

/// A writer that moves a progress bar by what passes through it.
struct Counted<W> {
    inner: W,
    bar: ProgressBar,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Sends `items` into `guest_dir` as one tar stream; the guest's refusal is an error.
async fn send(
    socket: &Path,
    name: &str,
    guest_dir: &str,
    items: Vec<Item>,
    total: u64,
    quiet: bool,
) -> Result<(), Error> {
    let session =
        Session::open(socket, &Request::VmCopyIn { name: name.to_string(), path: guest_dir.to_string() })
            .await?;
    let progress = bar(total, quiet);
    let counter = progress.clone();
    // Compressed on the way (the agent knows zstd by its magic): what a copy waits on is the
    // guest's channel, not this CPU. The bar counts the checkout's bytes.
    let (ending, _) = send_tar(session, ProgressBar::hidden(), move |sink| {
        let refs: Vec<&Item> = items.iter().collect();
        let mut zstd = zstd::Encoder::new(sink, ZSTD_LEVEL).map_err(|e| format!("cannot compress: {e}"))?;
        pack::write(&refs, &mut Counted { inner: &mut zstd, bar: counter })
            .map_err(|e| format!("cannot read the checkout: {e}"))?;
        zstd.finish().map(drop).map_err(|e| format!("cannot compress: {e}"))
    })
    .await?;
    progress.finish_and_clear();
    match ending {
        Ending::Exited(0) => Ok(()),
        Ending::Exited(code) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("the copy into {name}:{guest_dir} failed in the VM (exit code {code})"),
        )),
        Ending::Failed { message, .. } => Err(Error::new(
            ErrorKind::Unavailable,
            format!("the copy into {name}:{guest_dir} failed: {}", escape(&message)),
        )
        .with_hint(format!("is there room on the VM's disk? see `banger vm exec {name} -- df -h /`"))),
    }
}

/// Copies the checkout at `top` into `guest_dir` in VM `name` and records it there.
pub async fn copy(
    socket: &Path,
    name: &str,
    top: &Path,
    guest_dir: &str,
    quiet: bool,
) -> Result<Copied, Error> {
    let started = Instant::now();
    if !guest_dir.starts_with('/') {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("--to {guest_dir:?} is not an absolute path"),
        )
        .with_hint(format!("name a directory in the guest, e.g. --to {}", crate::exec_args::WORKSPACE_DIR)));
    }
    // The state recorded is taken first: whatever changes during the copy shows as a change.
    let (commit, tree, copied_at) = (git::head(top), git::snapshot(top)?, unix_now());
    let plan = plan(top)?;
    let (files, bytes, git_bytes) = (plan.files.len(), Plan::bytes(&plan.files), Plan::bytes(&plan.git));
    let total = plan.tar_bytes();
    let items: Vec<Item> = plan.git.into_iter().chain(plan.files).collect();
    send(socket, name, guest_dir, items, total, quiet).await?;
    let workspace = Workspace {
        host_dir: top.to_string_lossy().into_owned(),
        guest_dir: guest_dir.to_string(),
        commit,
        tree,
        copied_at,
    };
    record(socket, name, workspace.clone()).await?;
    Ok(Copied { workspace, files, bytes, git_bytes, deleted: 0, took: started.elapsed() })
}

fn plan(top: &Path) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    pack::work_tree(top, &git::files(top)?, &mut plan.files)?;
    plan.git = pack::git_dir(top, None)?;
    Ok(plan)
}

async fn record(socket: &Path, name: &str, workspace: Workspace) -> Result<(), Error> {
    let mut c = client::connect(socket).await?;
    client::require(&c, WORKSPACE_SINCE, "workspaces")?;
    let request = Request::VmWorkspaceSet { name: name.to_string(), workspace: Some(workspace) };
    vm(&mut c, socket, request).await.map(drop)
}

fn report_copy(out: &Output, name: &str, c: &Copied) {
    if out.json {
        out.json(&json!({
            "workspace": c.workspace,
            "files": c.files,
            "bytes": c.bytes,
            "git_bytes": c.git_bytes,
            "deleted": c.deleted,
            "seconds": c.took.as_secs_f64(),
        }));
    } else {
        println!("{}", copy_line(name, c));
    }
}

fn copy_line(name: &str, c: &Copied) -> String {
    format!(
        "copied {} file(s) ({}) and .git ({}) from {} to {}:{} in {:.1} s",
        c.files,
        human_bytes(c.bytes),
        human_bytes(c.git_bytes),
        escape(&c.workspace.host_dir),
        escape(name),
        escape(&c.workspace.guest_dir),
        c.took.as_secs_f64()
    )
}

/// `vm run --workspace`: copies after boot, says so on stderr (stdout is the command's).
pub async fn copy_for_run(socket: &Path, name: &str, dir: &Path, quiet: bool) -> Result<String, Error> {
    let top = top_of(Some(dir))?;
    let guest_dir = crate::exec_args::WORKSPACE_DIR;
    let copied = copy(socket, name, &top, guest_dir, quiet).await?;
    if !quiet {
        eprintln!("banger: {}", copy_line(name, &copied));
    }
    Ok(guest_dir.to_string())
}

fn show_preview(top: &Path, out: &Output) -> Result<(), Error> {
    let plan = plan(top)?;
    // Counting is advice: a failure says so and the preview goes on.
    let ignored = match git::ignored(top) {
        Ok(paths) => Some(git::count_by_dir(&paths)),
        Err(e) => {
            eprintln!("banger: warning: cannot count the ignored files: {}", escape(&e.message));
            None
        }
    };
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    if out.json {
        let files: Vec<_> = plan.files.iter().map(|i| lossy(&i.name)).collect();
        let skipped = ignored
            .as_ref()
            .map(|v| v.iter().map(|(d, n)| (lossy(d), *n)).collect::<std::collections::BTreeMap<_, _>>());
        out.json(&json!({
            "host_dir": lossy(top),
            "files": files,
            "bytes": Plan::bytes(&plan.files),
            "git_bytes": Plan::bytes(&plan.git),
            "ignored_by_dir": skipped,
        }));
        return Ok(());
    }
    let mut text = String::new();
    for i in &plan.files {
        text.push_str(&format!("{}\n", escape(&lossy(&i.name))));
    }
    text.push_str(&format!(
        "would copy {} file(s) ({}) and .git ({}) from {}\n",
        plan.files.len(),
        human_bytes(Plan::bytes(&plan.files)),
        human_bytes(Plan::bytes(&plan.git)),
        escape(&lossy(top))
    ));
    if let Some(counts) = ignored {
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        text.push_str(&format!("skipped {total} ignored file(s):\n"));
        for (dir, n) in counts {
            text.push_str(&format!("  {:>7}  {}/\n", n, escape(&lossy(&dir))));
        }
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}

/// What changed on the host since `ws` was recorded: the changes, the tree and HEAD now.
fn changes_since(ws: &Workspace) -> Result<(Changes, String, Option<String>), Error> {
    let top = Path::new(&ws.host_dir);
    let tree = git::snapshot(top)?;
    let changes = if tree == ws.tree { Changes::default() } else { git::diff(top, &ws.tree, &tree)? };
    Ok((changes, tree, git::head(top)))
}

/// The note `vm exec` and `vm ssh` print, if the host's checkout changed since the copy.
pub fn change_note(info: &VmInfo) -> Option<String> {
    let ws = info.workspace.as_ref()?;
    // A checkout moved or removed since: nothing to compare with.
    if !Path::new(&ws.host_dir).is_dir() {
        return None;
    }
    let sync = format!("banger vm workspace sync {}", info.name);
    match changes_since(ws) {
        Ok((c, _, head)) => {
            let moved = head != ws.commit;
            if c.is_empty() && !moved {
                return None;
            }
            Some(format!(
                "workspace changed since copy: {} modified, {} new, {} deleted{} — {sync}",
                c.modified.len(),
                c.added.len(),
                c.deleted.len(),
                if moved { ", new HEAD" } else { "" }
            ))
        }
        Err(_) => None,
    }
}

/// Prints [`change_note`] as one line on stderr. Never fails: it is advice.
pub fn warn_if_changed(info: &VmInfo) {
    if let Some(note) = change_note(info) {
        eprintln!("banger: {}", escape(&note));
    }
}

/// How long `vm exec` waits for the VM's record before it goes on without the check.
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `vm exec`'s check: the VM's record, then the note, off the runtime (git runs). Errors are
/// the exec's to report; a daemon slow to answer only skips the check.
pub async fn check_before_exec(socket: PathBuf, name: String) {
    let ask = async {
        let mut c = client::connect(&socket).await.ok()?;
        if c.version < WORKSPACE_SINCE {
            return None;
        }
        vm(&mut c, &socket, Request::VmInspect { name }).await.ok()
    };
    let Ok(Some(info)) = tokio::time::timeout(CHECK_WAIT, ask).await else { return };
    if info.workspace.is_none() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || warn_if_changed(&info)).await;
}

fn recorded(info: &VmInfo) -> Result<Workspace, Error> {
    info.workspace.as_deref().cloned().ok_or_else(|| {
        Error::new(ErrorKind::NotFound, format!("VM {} has no workspace", info.name))
            .with_hint(format!("copy one first: banger vm workspace copy {}", info.name))
    })
}

async fn sync(socket: &Path, name: &str, preview: bool, out: &Output) -> Result<(), Error> {
    let started = Instant::now();
    let info = inspect(socket, name).await?;
    let ws = recorded(&info)?;
    let top = PathBuf::from(&ws.host_dir);
    if !top.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("the workspace's checkout {} is gone", escape(&ws.host_dir)),
        )
        .with_hint(format!("copy another: banger vm workspace copy {name} DIR")));
    }
    let copied_at = unix_now();
    let (changes, tree, commit) = changes_since(&ws)?;
    // Everything in .git written since the last copy: objects, refs, the index, HEAD. A second
    // of slack for a write in the copy's own second.
    let since = i64::try_from(ws.copied_at).unwrap_or(i64::MAX).saturating_sub(1);
    let git_items = pack::git_dir(&top, Some(since))?;
    let mut files = vec![];
    let sent: Vec<PathBuf> = changes.modified.iter().chain(&changes.added).cloned().collect();
    pack::work_tree(&top, &sent, &mut files)?;
    if preview {
        return show_changes(out, &changes, git_items.len());
    }
    require_running(&info)?;
    // Nothing in the work tree and the same HEAD: .git may still have news (other refs, the
    // snapshot's own objects), sent quietly.
    let up_to_date = changes.is_empty() && commit == ws.commit;
    let say_up_to_date = || {
        if out.json {
            out.json(&json!({ "up_to_date": true }));
        } else {
            println!("{}:{} is up to date", escape(name), escape(&ws.guest_dir));
        }
    };
    if up_to_date && git_items.is_empty() {
        say_up_to_date();
        return Ok(());
    }
    // Deleted first: a path that was a file may be a directory now.
    if !changes.deleted.is_empty() {
        delete_in_guest(socket, name, &ws.guest_dir, &changes.deleted).await?;
    }
    let (n, bytes, git_bytes) = (files.len(), Plan::bytes(&files), Plan::bytes(&git_items));
    let plan = Plan { files, git: git_items };
    let total = plan.tar_bytes();
    let items: Vec<Item> = plan.git.into_iter().chain(plan.files).collect();
    send(socket, name, &ws.guest_dir, items, total, out.json).await?;
    let workspace = Workspace { commit, tree, copied_at, ..ws.clone() };
    record(socket, name, workspace.clone()).await?;
    let copied = Copied {
        workspace,
        files: n,
        bytes,
        git_bytes,
        deleted: changes.deleted.len(),
        took: started.elapsed(),
    };
    if up_to_date {
        say_up_to_date();
    } else if out.json {
        report_copy(out, name, &copied);
    } else {
        println!(
            "synced {}:{}: {} modified, {} new, {} deleted ({}), .git ({}) in {:.1} s",
            escape(name),
            escape(&copied.workspace.guest_dir),
            changes.modified.len(),
            changes.added.len(),
            copied.deleted,
            human_bytes(bytes),
            human_bytes(git_bytes),
            copied.took.as_secs_f64()
        );
    }
    Ok(())
}

fn show_changes(out: &Output, c: &Changes, git_files: usize) -> Result<(), Error> {
    let lossy = |v: &[PathBuf]| v.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>();
    if out.json {
        out.json(&json!({
            "modified": lossy(&c.modified),
            "new": lossy(&c.added),
            "deleted": lossy(&c.deleted),
            "git_files": git_files,
        }));
        return Ok(());
    }
    for (mark, paths) in [("M", &c.modified), ("A", &c.added), ("D", &c.deleted)] {
        for p in lossy(paths) {
            println!("{mark} {}", escape(&p));
        }
    }
    println!(
        "would sync {} modified, {} new, {} deleted, and {git_files} file(s) of .git",
        c.modified.len(),
        c.added.len(),
        c.deleted.len()
    );
    Ok(())
}

/// Runs `argv` in the guest with `stdin`, its stdout into `stdout`; its exit code and stderr.
async fn run_in_guest(
    socket: &Path,
    name: &str,
    argv: &[&str],
    cwd: Option<&str>,
    stdin: Option<Vec<u8>>,
    stdout: &mut dyn Write,
) -> Result<(Ending, Vec<u8>), Error> {
    let spec = ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: GUEST_ENV.iter().map(|s| s.to_string()).collect(),
        cwd: cwd.map(str::to_string),
        user: None,
        tty: None,
        stdin: stdin.is_some(),
    };
    let mut session = Session::open(socket, &Request::VmExec { name: name.to_string(), spec }).await?;
    if let Some(data) = stdin {
        let input = session.input();
        tokio::spawn(async move {
            for chunk in data.chunks(STDIN_CHUNK) {
                if input.send(ExecInput::Stdin(chunk.to_vec())).await.is_err() {
                    return;
                }
            }
            let _ = input.send(ExecInput::CloseStdin).await;
        });
    }
    let mut stderr = Vec::new();
    loop {
        match session.next().await? {
            Some(ExecEvent::Output { stream: OutputStream::Stdout, data }) => stdout
                .write_all(&data)
                .map_err(|e| Error::internal(format!("cannot write what the guest sent: {e}")))?,
            Some(ExecEvent::Output { stream: OutputStream::Stderr, data }) => stderr.extend(data),
            Some(ExecEvent::Started { .. }) => {}
            Some(ExecEvent::Exited(s)) => return Ok((Ending::Exited(s.code()), stderr)),
            Some(ExecEvent::Failed { code, message }) => {
                return Ok((Ending::Failed { code, message }, stderr));
            }
            None => return Err(Error::protocol("the exec's reply stream ended without an exit status")),
        }
    }
}

/// Deletes `paths` (relative) under `guest_dir`: NUL-separated on the stdin of `xargs -0 rm -f`,
/// so any name survives and no shell reads it.
async fn delete_in_guest(socket: &Path, name: &str, guest_dir: &str, paths: &[PathBuf]) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let mut list = Vec::new();
    for p in paths {
        list.extend_from_slice(p.as_os_str().as_bytes());
        list.push(0);
    }
    let argv = ["xargs", "-0", "rm", "-f", "--"];
    let (ending, stderr) =
        run_in_guest(socket, name, &argv, Some(guest_dir), Some(list), &mut std::io::sink()).await?;
    match ending {
        Ending::Exited(0) => Ok(()),
        Ending::Exited(code) => Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "deleting files in {name}:{guest_dir} failed (exit code {code}): {}",
                escape(String::from_utf8_lossy(&stderr).trim())
            ),
        )),
        Ending::Failed { message, .. } => Err(Error::new(
            ErrorKind::Unavailable,
            format!("cannot delete files in {name}:{guest_dir}: {}", escape(&message)),
        )
        .with_hint("the guest needs xargs and rm (coreutils, findutils or busybox)")),
    }
}

async fn pull(socket: &Path, name: &str, branch: Option<String>, out: &Output) -> Result<(), Error> {
    let info = inspect(socket, name).await?;
    let ws = recorded(&info)?;
    require_running(&info)?;
    let top = PathBuf::from(&ws.host_dir);
    if !top.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("the workspace's checkout {} is gone", escape(&ws.host_dir)),
        )
        .with_hint("pull into another clone of the repository by copying it again first"));
    }
    let branch = branch.unwrap_or_else(|| format!("banger/{name}"));
    if !git::valid_branch(&top, &branch) {
        return Err(Error::new(ErrorKind::InvalidInput, format!("{branch:?} is not a valid branch name"))
            .with_hint("use e.g. --branch banger/feature"));
    }
    if git::current_branch(&top).as_deref() == Some(branch.as_str()) {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "branch {branch} is checked out in {}; pull never touches the work tree",
                escape(&ws.host_dir)
            ),
        )
        .with_hint(format!("pull into another branch (--branch banger/{name}), then merge it yourself")));
    }
    // The guest's commits beyond what was copied; the host has that commit already.
    let mut argv = vec!["git", "-C", ws.guest_dir.as_str(), "bundle", "create", "--quiet", "-", "HEAD"];
    let base = ws.commit.as_deref().map(|c| format!("^{c}"));
    if let Some(b) = &base {
        argv.push(b);
    }
    let scratch = tempfile::Builder::new()
        .prefix("banger-pull-")
        .tempfile()
        .map_err(|e| Error::internal(format!("cannot make a file for the bundle: {e}")))?;
    let mut file = std::io::BufWriter::new(scratch.as_file());
    let (ending, stderr) = run_in_guest(socket, name, &argv, None, None, &mut file).await?;
    file.flush().map_err(|e| Error::internal(format!("cannot write the bundle: {e}")))?;
    drop(file);
    let said = String::from_utf8_lossy(&stderr).trim().to_string();
    match ending {
        Ending::Exited(0) => {}
        Ending::Failed { code: 127, .. } => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("VM {name} has no git: pull needs git in the guest"),
            )
            .with_hint("use an image with git (e.g. Debian with the git package), or install it in the VM"));
        }
        Ending::Exited(_) if said.contains("empty bundle") => {
            if out.json {
                out.json(&json!({ "branch": branch, "commits": 0 }));
            } else {
                println!("no new commits in {name}:{} since the copy", escape(&ws.guest_dir));
            }
            return Ok(());
        }
        Ending::Exited(code) => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "git in the guest failed to bundle its commits (exit code {code}): {}",
                    escape(&said)
                ),
            )
            .with_hint(format!(
                "see what is there: banger vm exec {name} -- git -C {} log --oneline -5",
                ws.guest_dir
            )));
        }
        Ending::Failed { message, .. } => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("cannot run git in {name}: {}", escape(&message)),
            ));
        }
    }
    let before = git::branch_tip(&top, &branch);
    git::fetch_bundle(&top, scratch.path(), &branch)?;
    let after = git::branch_tip(&top, &branch)
        .ok_or_else(|| Error::internal(format!("branch {branch} is missing after the fetch")))?;
    let from = before.as_deref().or(ws.commit.as_deref());
    let commits = git::count_new(&top, &after, from).unwrap_or(0);
    if out.json {
        out.json(&json!({ "branch": branch, "commits": commits, "tip": after }));
    } else {
        println!(
            "{commits} commit(s) from {name} now on branch {branch} ({}); merge with: git merge {branch}",
            after.get(..12).unwrap_or(&after)
        );
    }
    Ok(())
}
