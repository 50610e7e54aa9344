//! The agent's channel to the host: a virtio-serial port (QEMU), a vsock listener
//! (Firecracker), or a unix stream socket (the agent as a host process, for tests).
//!
//! Sockets have connections. A virtio-serial port does not: while no host is connected, reads
//! return 0, poll reports POLLHUP without end, and writes block. So the port is opened
//! non-blocking, a "connection" starts when the host sends bytes and ends when it goes away.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use protocol::agent::{PORT_NAME, VSOCK_PORT};

pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
    Port { fd: std::sync::Arc<OwnedFd>, name: PathBuf },
}

/// One connection (or, on a port, one stretch of the host being there).
pub struct Conn {
    fd: std::sync::Arc<OwnedFd>,
    port: bool,
}

pub enum Read {
    Data(usize),
    Closed,
    TimedOut,
}

impl Listener {
    pub fn unix(path: &Path) -> io::Result<Listener> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path)?;
        }
        Ok(Listener::Unix(UnixListener::bind(path)?))
    }

    /// The virtio-serial port named [`PORT_NAME`], else a vsock listener on [`VSOCK_PORT`].
    pub fn guest() -> io::Result<Listener> {
        if let Some(dev) = find_port()? {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&dev)?;
            return Ok(Listener::Port { fd: std::sync::Arc::new(OwnedFd::from(file)), name: dev });
        }
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, listen, socket};
        let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, VSOCK_PORT))?;
        listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))?;
        Ok(Listener::Vsock(fd))
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_) => "a unix socket".into(),
            Listener::Vsock(_) => format!("vsock port {VSOCK_PORT}"),
            Listener::Port { name, .. } => format!("virtio-serial port {}", name.display()),
        }
    }

    /// Waits for the host.
    pub fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                let conn = Conn { fd: std::sync::Arc::new(OwnedFd::from(s)), port: false };
                conn.set_nonblocking()?;
                Ok(conn)
            }
            Listener::Vsock(l) => {
                let fd = nix::sys::socket::accept4(l.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)?;
                // SAFETY: accept4 just returned this descriptor, and nothing else owns it.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let conn = Conn { fd: std::sync::Arc::new(fd), port: false };
                conn.set_nonblocking()?;
                Ok(conn)
            }
            Listener::Port { fd, .. } => {
                // The host is there once bytes arrive; while it is away, POLLHUP never stops.
                let mut backoff = Duration::from_millis(2);
                loop {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let revents = fds.first().and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
                    if revents.contains(PollFlags::POLLIN) {
                        return Ok(Conn { fd: fd.clone(), port: true });
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            }
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// `/dev/vportNpM` whose `/sys/class/virtio-ports/vportNpM/name` is ours (no udev, so no
/// `/dev/virtio-ports/NAME` symlink).
fn find_port() -> io::Result<Option<PathBuf>> {
    let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") else { return Ok(None) };
    for entry in dir.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Ok(Some(Path::new("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

impl Conn {
    /// Reads what is there, waiting at most until `deadline`.
    pub fn read(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Read> {
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Read::TimedOut);
                    }
                    PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let revents = fds.first().and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
            if revents.is_empty() {
                continue;
            }
            match nix::unistd::read(&*self.fd, buf) {
                Ok(0) => return Ok(Read::Closed),
                Ok(n) => return Ok(Read::Data(n)),
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    // A port whose host left with nothing unread: POLLHUP and no data.
                    if self.port && revents.contains(PollFlags::POLLHUP) {
                        return Ok(Read::Closed);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes all of `bytes`, unless `give_up` says to stop (checked while the write waits).
    pub fn write_all(&self, mut bytes: &[u8], give_up: &dyn Fn() -> bool) -> io::Result<()> {
        while !bytes.is_empty() {
            if give_up() {
                return Err(io::ErrorKind::Interrupted.into());
            }
            match nix::sys::socket::send(self.fd.as_raw_fd(), bytes, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
            {
                Err(Errno::ENOTSOCK) => match nix::unistd::write(&*self.fd, bytes) {
                    Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                    Err(Errno::EAGAIN | Errno::EINTR) => self.wait_writable()?,
                    Err(e) => return Err(e.into()),
                },
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(Errno::EAGAIN | Errno::EINTR) => self.wait_writable()?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn wait_writable(&self) -> io::Result<()> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(50u8)) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// After a fatal error: a socket is closed (dropped); on a port, where the host cannot be
    /// hung up on, input is discarded until the host goes away.
    pub fn finish(self) {
        if !self.port {
            let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(Read::Data(_)) = self.read(&mut buf, None) {}
    }

    /// Makes the socket's writes non-blocking (a port is opened so).
    fn set_nonblocking(&self) -> io::Result<()> {
        let flags = nix::fcntl::fcntl(&*self.fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&*self.fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(())
    }
}
