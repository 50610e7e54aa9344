//! Stopping an import or a pull that nobody waits for any more (the client went away). The
//! async side is stopped by dropping its future; the blocking side (extraction) notices a
//! flag, checked on every read, and a read from a pipe that stalls wakes up to check it.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Read by the blocking work; set when the [`CancelOnDrop`] made with it goes.
#[derive(Clone, Debug)]
pub struct Cancel(Arc<AtomicBool>);

/// Cancels its [`Cancel`] when dropped: held by the future, so dropping the future cancels.
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Cancel {
    pub fn new() -> (Cancel, CancelOnDrop) {
        let flag = Arc::new(AtomicBool::new(false));
        (Cancel(flag.clone()), CancelOnDrop(flag))
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long a read from a pipe waits before it looks at the flag again.
const POLL_MS: u16 = 200;

/// A reader that fails with "cancelled" once its [`Cancel`] is set, even while its input (a
/// pipe or socket) sends nothing.
pub struct CancellableRead<R> {
    inner: R,
    cancel: Cancel,
    /// Regular files are always readable; pipes and sockets are polled.
    poll: bool,
}

impl<R: Read + AsFd> CancellableRead<R> {
    pub fn new(inner: R, cancel: Cancel) -> Self {
        let poll = nix::sys::stat::fstat(inner.as_fd())
            .map(|st| st.st_mode & libc::S_IFMT != libc::S_IFREG)
            .unwrap_or(true);
        CancellableRead { inner, cancel, poll }
    }
}

impl<R: Read + AsFd> Read for CancellableRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.cancel.is_cancelled() {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled"));
            }
            if !self.poll {
                break;
            }
            let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(POLL_MS)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                // Readable, at end, or failed: the read itself says which.
                Ok(_) | Err(_) => break,
            }
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_pipe_read_ends_when_cancelled() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let (cancel, on_drop) = Cancel::new();
        let mut r = CancellableRead::new(reader, cancel);
        let t = std::thread::spawn(move || r.read(&mut [0u8; 8]));
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(on_drop);
        let err = t.join().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "cancelled");
    }
}
