//! `AgentRequest::Connect`: a TCP connection to the guest's own loopback, carried as an exec
//! whose stdin and output are the socket (so it gets the exec's windows and acks). It needs
//! no guest network, only `lo`, which PID 1 brings up even without one.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, getsockopt, socket, sockopt,
};
use protocol::exec::OutputStream;

use crate::exec::{self, Ctx, Io, Started};
use crate::spawn::SpawnError;

/// How long the session's reader waits for a loopback connect to finish. One normally takes
/// microseconds; a listener whose backlog is full drops the SYN, and then the exec's own
/// thread sees how it ends.
const SETTLE: Duration = Duration::from_millis(20);

pub fn connect(ctx: &Ctx, id: u32, port: u16) {
    exec::begin(ctx, id, true, |_| {
        let socket = open(port)?;
        let output = socket
            .try_clone()
            .map_err(|e| SpawnError { code: 1, message: format!("cannot duplicate a socket: {e}") })?;
        Ok(Started {
            pid: None,
            io: Io {
                outputs: vec![(output, OutputStream::Stdout)],
                stdin: Some(socket),
                stdin_is_tty: false,
                socket: true,
            },
            tty: None,
        })
    });
}

/// What became of a connect within [`SETTLE`].
#[derive(Debug)]
enum Attempt {
    Connected(OwnedFd),
    /// Still in progress: the exec's thread finds out (a failure reads as an error).
    Pending(OwnedFd),
    Refused,
    Failed(Errno),
}

/// 127.0.0.1 first, then ::1 (a server may listen on one only).
fn open(port: u16) -> Result<OwnedFd, SpawnError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let mut last = Attempt::Refused;
    for addr in [v4, v6] {
        match attempt(addr) {
            Attempt::Connected(fd) | Attempt::Pending(fd) => return Ok(fd),
            other => last = other,
        }
    }
    let message = match last {
        Attempt::Failed(e) => format!("cannot connect to port {port} in the guest: {}", e.desc()),
        _ => format!("connection refused: nothing listens on port {port} in the guest"),
    };
    Err(SpawnError { code: 1, message })
}

fn attempt(addr: SocketAddr) -> Attempt {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = match socket(family, SockType::Stream, flags, None) {
        Ok(fd) => fd,
        // No IPv6 in this kernel: as good as refused.
        Err(Errno::EAFNOSUPPORT) => return Attempt::Refused,
        Err(e) => return Attempt::Failed(e),
    };
    // The bytes are relayed as they come: Nagle would hold a small write back for the peer's
    // delayed ack (40 ms each time in an ssh handshake's back and forth).
    let _ = nix::sys::socket::setsockopt(&fd, sockopt::TcpNoDelay, &true);
    let started = match addr {
        SocketAddr::V4(a) => nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    };
    match started {
        Ok(()) => return Attempt::Connected(fd),
        Err(Errno::EINPROGRESS | Errno::EINTR) => {}
        Err(e) => return refused_or(e),
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Attempt::Pending(fd);
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        let timeout = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Attempt::Failed(e),
        }
    }
    match getsockopt(&fd, sockopt::SocketError) {
        Ok(0) => Attempt::Connected(fd),
        Ok(errno) => refused_or(Errno::from_raw(errno)),
        Err(e) => Attempt::Failed(e),
    }
}

fn refused_or(e: Errno) -> Attempt {
    match e {
        // No ::1 (IPv6 off on lo) reads as EADDRNOTAVAIL or ENETUNREACH.
        Errno::ECONNREFUSED | Errno::EADDRNOTAVAIL | Errno::ENETUNREACH => Attempt::Refused,
        e => Attempt::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_listener_is_reached_and_a_free_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = open(port).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"hi").unwrap();
        let mut stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(false).unwrap();
        let mut got = [0u8; 2];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        drop(listener);
        drop(peer);

        // A port that was just free again.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = open(free).unwrap_err();
        assert_eq!(err.code, 1);
        assert_eq!(err.message, format!("connection refused: nothing listens on port {free} in the guest"));
    }

    #[test]
    fn an_ipv6_only_listener_is_found_on_the_second_try() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else { return }; // no IPv6 here
        let port = listener.local_addr().unwrap().port();
        assert!(open(port).is_ok());
    }
}
