//! The built-in server's `sftp` subsystem: SFTP version 3 (what OpenSSH speaks), with the
//! OpenSSH extensions its `sftp` and `scp` (which uses SFTP since OpenSSH 9) rely on:
//! posix-rename, hardlink, fsync, limits, expand-path. Requests are answered one at a time,
//! in order; the session runs as the server's user, so the kernel decides what is allowed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u32 = 3;
/// The largest request taken (OpenSSH sends at most 256 KiB of data in one).
const MAX_PACKET: u32 = 256 * 1024 + 1024;
const MAX_READ: u32 = 255 * 1024;
const MAX_HANDLES: usize = 1024;

// Packet types.
const INIT: u8 = 1;
const VERSION_REPLY: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;
const EXTENDED: u8 = 200;
const EXTENDED_REPLY: u8 = 201;

// Status codes.
const OK: u32 = 0;
const EOF: u32 = 1;
const NO_SUCH_FILE: u32 = 2;
const PERMISSION_DENIED: u32 = 3;
const FAILURE: u32 = 4;
const BAD_MESSAGE: u32 = 5;
const OP_UNSUPPORTED: u32 = 8;

// Attribute flags.
const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

// Open flags.
const FXF_READ: u32 = 0x1;
const FXF_WRITE: u32 = 0x2;
const FXF_APPEND: u32 = 0x4;
const FXF_CREAT: u32 = 0x8;
const FXF_TRUNC: u32 = 0x10;
const FXF_EXCL: u32 = 0x20;

/// Serves one subsystem channel until the client closes it.
pub async fn serve(mut stream: impl AsyncRead + AsyncWrite + Unpin, home: &str) {
    let mut sftp = Sftp { home: PathBuf::from(home), handles: HashMap::new(), next: 0 };
    loop {
        let len = match stream.read_u32().await {
            Ok(n) => n,
            Err(_) => return,
        };
        if len == 0 || len > MAX_PACKET {
            return; // not SFTP, or hostile: nothing sensible to answer
        }
        let mut body = vec![0u8; len as usize];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        // File system calls block: the runtime moves its other tasks off this worker meanwhile.
        let reply = tokio::task::block_in_place(|| sftp.handle(&body));
        let mut framed = Vec::with_capacity(reply.len() + 4);
        framed.extend_from_slice(&u32::try_from(reply.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

/// What a request's bytes are read with.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn attrs(&mut self) -> Option<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.ids = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.mode = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Some(a)
    }
}

/// A reply being written.
struct Out(Vec<u8>);

impl Out {
    fn new(kind: u8, id: u32) -> Out {
        let mut v = vec![kind];
        v.extend_from_slice(&id.to_be_bytes());
        Out(v)
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(u32::try_from(b.len()).unwrap_or(0));
        self.0.extend_from_slice(b);
        self
    }
    fn attrs(&mut self, m: &std::fs::Metadata) -> &mut Self {
        self.u32(ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME);
        self.u64(m.size()).u32(m.uid()).u32(m.gid()).u32(m.mode());
        let secs = |t: i64| u32::try_from(t.max(0)).unwrap_or(u32::MAX);
        self.u32(secs(m.atime())).u32(secs(m.mtime()))
    }
}

#[derive(Default, Debug)]
struct Attrs {
    size: Option<u64>,
    ids: Option<(u32, u32)>,
    mode: Option<u32>,
    times: Option<(u32, u32)>,
}

enum Open {
    File(File),
    /// A directory's entries, listed at opendir and handed out in batches.
    Dir(Vec<(String, PathBuf)>),
}

struct Sftp {
    home: PathBuf,
    handles: HashMap<u32, Open>,
    next: u32,
}

fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut o = Out::new(STATUS, id);
    o.u32(code).bytes(message.as_bytes()).bytes(b"en");
    o.0
}

fn error(id: u32, e: &io::Error) -> Vec<u8> {
    let code = match e.kind() {
        io::ErrorKind::NotFound => NO_SUCH_FILE,
        io::ErrorKind::PermissionDenied => PERMISSION_DENIED,
        _ => FAILURE,
    };
    status(id, code, &e.to_string())
}

fn ok(id: u32) -> Vec<u8> {
    status(id, OK, "OK")
}

impl Sftp {
    /// One request in, one reply out.
    fn handle(&mut self, body: &[u8]) -> Vec<u8> {
        let mut r = Reader(body);
        let Some(kind) = r.u8() else { return status(0, BAD_MESSAGE, "empty request") };
        if kind == INIT {
            let mut o = Out::new(VERSION_REPLY, VERSION);
            // The id field of VERSION is the version itself; then the extensions.
            for (name, version) in [
                ("posix-rename@openssh.com", "1"),
                ("hardlink@openssh.com", "1"),
                ("fsync@openssh.com", "1"),
                ("limits@openssh.com", "1"),
                ("expand-path@openssh.com", "1"),
            ] {
                o.bytes(name.as_bytes()).bytes(version.as_bytes());
            }
            return o.0;
        }
        let Some(id) = r.u32() else { return status(0, BAD_MESSAGE, "no request id") };
        match self.request(kind, id, &mut r) {
            Some(reply) => reply,
            None => status(id, BAD_MESSAGE, "malformed request"),
        }
    }

    fn path(&self, raw: &str) -> PathBuf {
        let p = if raw.is_empty() { Path::new(".") } else { Path::new(raw) };
        let joined = if p.is_absolute() { p.to_path_buf() } else { self.home.join(p) };
        normalize(&joined)
    }

    fn add(&mut self, open: Open) -> Option<Vec<u8>> {
        if self.handles.len() >= MAX_HANDLES {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        self.handles.insert(self.next, open);
        Some(self.next.to_string().into_bytes())
    }

    fn handle_of(r: &mut Reader) -> Option<u32> {
        std::str::from_utf8(r.bytes()?).ok()?.parse().ok()
    }

    fn request(&mut self, kind: u8, id: u32, r: &mut Reader) -> Option<Vec<u8>> {
        Some(match kind {
            OPEN => {
                let path = self.path(&r.string()?);
                let flags = r.u32()?;
                let attrs = r.attrs()?;
                let mut o = OpenOptions::new();
                o.read(flags & FXF_READ != 0)
                    .write(flags & FXF_WRITE != 0)
                    .append(flags & FXF_APPEND != 0)
                    .truncate(flags & FXF_TRUNC != 0)
                    .mode(attrs.mode.unwrap_or(0o666) & 0o7777);
                if flags & FXF_EXCL != 0 {
                    o.create_new(true);
                } else if flags & FXF_CREAT != 0 {
                    o.create(true);
                }
                match o.open(&path) {
                    Ok(f) => match self.add(Open::File(f)) {
                        Some(h) => Out::new(HANDLE, id).bytes(&h).0.clone(),
                        None => status(id, FAILURE, "too many open files"),
                    },
                    Err(e) => error(id, &e),
                }
            }
            CLOSE => match self.handles.remove(&Self::handle_of(r)?) {
                Some(_) => ok(id),
                None => status(id, FAILURE, "no such handle"),
            },
            READ => {
                let h = Self::handle_of(r)?;
                let offset = r.u64()?;
                let len = r.u32()?.min(MAX_READ);
                let Some(Open::File(f)) = self.handles.get(&h) else {
                    return Some(status(id, FAILURE, "no such file handle"));
                };
                let mut buf = vec![0u8; len as usize];
                match f.read_at(&mut buf, offset) {
                    Ok(0) if len > 0 => status(id, EOF, "end of file"),
                    Ok(n) => Out::new(DATA, id).bytes(buf.get(..n).unwrap_or_default()).0.clone(),
                    Err(e) => error(id, &e),
                }
            }
            WRITE => {
                let h = Self::handle_of(r)?;
                let offset = r.u64()?;
                let data = r.bytes()?;
                let Some(Open::File(f)) = self.handles.get(&h) else {
                    return Some(status(id, FAILURE, "no such file handle"));
                };
                match f.write_all_at(data, offset) {
                    Ok(()) => ok(id),
                    Err(e) => error(id, &e),
                }
            }
            LSTAT | STAT => {
                let path = self.path(&r.string()?);
                let m =
                    if kind == LSTAT { std::fs::symlink_metadata(&path) } else { std::fs::metadata(&path) };
                match m {
                    Ok(m) => Out::new(ATTRS, id).attrs(&m).0.clone(),
                    Err(e) => error(id, &e),
                }
            }
            FSTAT => {
                let Some(Open::File(f)) = self.handles.get(&Self::handle_of(r)?) else {
                    return Some(status(id, FAILURE, "no such file handle"));
                };
                match f.metadata() {
                    Ok(m) => Out::new(ATTRS, id).attrs(&m).0.clone(),
                    Err(e) => error(id, &e),
                }
            }
            SETSTAT => {
                let path = self.path(&r.string()?);
                let attrs = r.attrs()?;
                match set_attrs(&path, None, &attrs) {
                    Ok(()) => ok(id),
                    Err(e) => error(id, &e),
                }
            }
            FSETSTAT => {
                let h = Self::handle_of(r)?;
                let attrs = r.attrs()?;
                let Some(Open::File(f)) = self.handles.get(&h) else {
                    return Some(status(id, FAILURE, "no such file handle"));
                };
                match set_attrs(Path::new(""), Some(f), &attrs) {
                    Ok(()) => ok(id),
                    Err(e) => error(id, &e),
                }
            }
            OPENDIR => {
                let path = self.path(&r.string()?);
                match std::fs::read_dir(&path) {
                    Ok(dir) => {
                        let mut entries =
                            vec![(".".to_string(), path.clone()), ("..".to_string(), path.join(".."))];
                        for e in dir.flatten() {
                            entries.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                        }
                        entries.reverse(); // handed out from the end
                        match self.add(Open::Dir(entries)) {
                            Some(h) => Out::new(HANDLE, id).bytes(&h).0.clone(),
                            None => status(id, FAILURE, "too many open directories"),
                        }
                    }
                    Err(e) => error(id, &e),
                }
            }
            READDIR => {
                let Some(Open::Dir(entries)) = self.handles.get_mut(&Self::handle_of(r)?) else {
                    return Some(status(id, FAILURE, "no such directory handle"));
                };
                let mut names = Vec::new();
                while names.len() < 100 {
                    let Some((name, path)) = entries.pop() else { break };
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        names.push((name, m));
                    }
                }
                if names.is_empty() {
                    return Some(status(id, EOF, "end of directory"));
                }
                let mut o = Out::new(NAME, id);
                o.u32(u32::try_from(names.len()).unwrap_or(0));
                for (name, m) in &names {
                    o.bytes(name.as_bytes()).bytes(long_name(name, m).as_bytes()).attrs(m);
                }
                o.0
            }
            REMOVE => done(id, std::fs::remove_file(self.path(&r.string()?))),
            MKDIR => {
                let path = self.path(&r.string()?);
                let mode = r.attrs()?.mode.unwrap_or(0o777) & 0o7777;
                done(id, std::fs::DirBuilder::new().mode(mode).create(path))
            }
            RMDIR => done(id, std::fs::remove_dir(self.path(&r.string()?))),
            REALPATH => {
                let path = self.path(&r.string()?);
                let real = std::fs::canonicalize(&path).unwrap_or(path);
                name_reply(id, &real.to_string_lossy())
            }
            RENAME => {
                let from = self.path(&r.string()?);
                let to = self.path(&r.string()?);
                // Plain SFTP rename does not replace an existing file (posix-rename does).
                if std::fs::symlink_metadata(&to).is_ok() {
                    status(id, FAILURE, &format!("{} exists", to.display()))
                } else {
                    done(id, std::fs::rename(from, to))
                }
            }
            READLINK => match std::fs::read_link(self.path(&r.string()?)) {
                Ok(target) => name_reply(id, &target.to_string_lossy()),
                Err(e) => error(id, &e),
            },
            SYMLINK => {
                // OpenSSH sends the target first, then the link's path (the reverse of the draft).
                let target = r.string()?;
                let link = self.path(&r.string()?);
                done(id, std::os::unix::fs::symlink(target, link))
            }
            EXTENDED => {
                let name = r.string()?;
                self.extended(id, &name, r)?
            }
            _ => status(id, OP_UNSUPPORTED, "operation not supported"),
        })
    }

    fn extended(&mut self, id: u32, name: &str, r: &mut Reader) -> Option<Vec<u8>> {
        Some(match name {
            "posix-rename@openssh.com" => {
                let from = self.path(&r.string()?);
                done(id, std::fs::rename(from, self.path(&r.string()?)))
            }
            "hardlink@openssh.com" => {
                let from = self.path(&r.string()?);
                done(id, std::fs::hard_link(from, self.path(&r.string()?)))
            }
            "fsync@openssh.com" => match self.handles.get(&Self::handle_of(r)?) {
                Some(Open::File(f)) => done(id, f.sync_all()),
                _ => status(id, FAILURE, "no such file handle"),
            },
            "limits@openssh.com" => {
                let mut o = Out::new(EXTENDED_REPLY, id);
                o.u64(u64::from(MAX_PACKET))
                    .u64(u64::from(MAX_READ))
                    .u64(u64::from(MAX_READ))
                    .u64(MAX_HANDLES as u64);
                o.0
            }
            "expand-path@openssh.com" => {
                let raw = r.string()?;
                let expanded = match raw.strip_prefix('~') {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        format!("{}{rest}", self.home.display())
                    }
                    _ => raw,
                };
                name_reply(id, &self.path(&expanded).to_string_lossy())
            }
            _ => status(id, OP_UNSUPPORTED, &format!("{name} is not supported")),
        })
    }
}

fn done(id: u32, result: io::Result<()>) -> Vec<u8> {
    match result {
        Ok(()) => ok(id),
        Err(e) => error(id, &e),
    }
}

/// A NAME reply of one entry (realpath, readlink, expand-path).
fn name_reply(id: u32, name: &str) -> Vec<u8> {
    let mut o = Out::new(NAME, id);
    o.u32(1).bytes(name.as_bytes()).bytes(name.as_bytes()).u32(0);
    o.0
}

fn set_attrs(path: &Path, file: Option<&File>, a: &Attrs) -> io::Result<()> {
    if let Some(size) = a.size {
        match file {
            Some(f) => f.set_len(size)?,
            None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if let Some(mode) = a.mode {
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        match file {
            Some(f) => f.set_permissions(perms)?,
            None => std::fs::set_permissions(path, perms)?,
        }
    }
    if let Some((uid, gid)) = a.ids {
        match file {
            Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid))?,
            None => std::os::unix::fs::chown(path, Some(uid), Some(gid))?,
        }
    }
    if let Some((atime, mtime)) = a.times {
        let t = |s: u32| nix::sys::time::TimeSpec::new(i64::from(s), 0);
        match file {
            Some(f) => nix::sys::stat::futimens(f, &t(atime), &t(mtime))?,
            None => nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                path,
                &t(atime),
                &t(mtime),
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )?,
        }
    }
    Ok(())
}

/// Lexically resolves `.` and `..` (the file system is not asked: the path may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// An `ls -l` line, as sftp's `ls -l` prints it.
fn long_name(name: &str, m: &std::fs::Metadata) -> String {
    let mode = m.mode();
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(10);
    perms.push(kind);
    for (bit, ch) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ] {
        perms.push(if mode & bit != 0 { ch } else { '-' });
    }
    let (_, month, day) = civil(m.mtime().div_euclid(86_400));
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = months.get(month.saturating_sub(1) as usize).copied().unwrap_or("???");
    let secs = m.mtime().rem_euclid(86_400);
    format!(
        "{perms} {:>4} {:<8} {:<8} {:>8} {month} {day:>2} {:02}:{:02} {name}",
        m.nlink(),
        m.uid(),
        m.gid(),
        m.size(),
        secs / 3600,
        secs % 3600 / 60
    )
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn request(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    fn code(reply: &[u8]) -> u32 {
        assert_eq!(reply[0], STATUS, "{reply:?}");
        u32::from_be_bytes(reply[5..9].try_into().unwrap())
    }

    #[test]
    fn paths_resolve_against_home_without_escaping_root() {
        let s = Sftp { home: "/root".into(), handles: HashMap::new(), next: 0 };
        assert_eq!(s.path(""), Path::new("/root"));
        assert_eq!(s.path("a/../b/./c"), Path::new("/root/b/c"));
        assert_eq!(s.path("/../../etc"), Path::new("/etc"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }

    #[test]
    fn garbage_and_unknown_requests_get_a_status_not_a_crash() {
        let mut s = Sftp { home: "/".into(), handles: HashMap::new(), next: 0 };
        assert_eq!(code(&s.handle(&[])), BAD_MESSAGE);
        assert_eq!(code(&s.handle(&[OPEN, 0, 0])), BAD_MESSAGE);
        assert_eq!(code(&s.handle(&request(OPEN, 1, &[b"x"]))), BAD_MESSAGE, "no flags");
        assert_eq!(code(&s.handle(&request(99, 2, &[]))), OP_UNSUPPORTED);
        assert_eq!(code(&s.handle(&request(CLOSE, 3, &[b"12"]))), FAILURE);
        assert_eq!(code(&s.handle(&request(READ, 3, &[b"not a handle"]))), BAD_MESSAGE);
        assert_eq!(code(&s.handle(&request(STAT, 4, &[b"/no/such/file"]))), NO_SUCH_FILE);
    }

    #[test]
    fn a_file_is_written_read_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sftp { home: dir.path().into(), handles: HashMap::new(), next: 0 };
        let mut open = request(OPEN, 1, &[b"f"]);
        open.extend_from_slice(&(FXF_WRITE | FXF_CREAT | FXF_TRUNC).to_be_bytes());
        open.extend_from_slice(&ATTR_PERMISSIONS.to_be_bytes());
        open.extend_from_slice(&0o640u32.to_be_bytes());
        let reply = s.handle(&open);
        assert_eq!(reply[0], HANDLE);
        let handle = reply[9..].to_vec();
        let mut write = request(WRITE, 2, &[&handle]);
        write.extend_from_slice(&3u64.to_be_bytes());
        write.extend_from_slice(&5u32.to_be_bytes());
        write.extend_from_slice(b"hello");
        assert_eq!(code(&s.handle(&write)), OK);
        assert_eq!(code(&s.handle(&request(CLOSE, 3, &[&handle]))), OK);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"\0\0\0hello");
        let mode = std::fs::metadata(dir.path().join("f")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        std::fs::write(dir.path().join("g"), "x").unwrap();
        assert_eq!(code(&s.handle(&request(RENAME, 4, &[b"f", b"g"]))), FAILURE, "plain rename keeps g");
        let mut posix = request(EXTENDED, 5, &[b"posix-rename@openssh.com", b"f", b"g"]);
        assert_eq!(code(&s.handle(&posix)), OK);
        posix.clear();
        assert_eq!(std::fs::read(dir.path().join("g")).unwrap(), b"\0\0\0hello");
    }
}
