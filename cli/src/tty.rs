//! The local terminal for `vm exec -t`: its window size, and raw mode held by a guard that
//! restores the saved settings when dropped (every return, error or unwinding panic).

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use protocol::exec::WindowSize;

/// The size of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, which lives across the
    // call; `fd` is a valid descriptor borrowed for its duration.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize { rows: ws.ws_row, cols: ws.ws_col })
}

/// The size to give a guest's terminal: stdout's, else stdin's, else 24×80.
pub fn current_size() -> WindowSize {
    window_size(std::io::stdout().as_fd())
        .or_else(|| window_size(std::io::stdin().as_fd()))
        .unwrap_or(WindowSize { rows: 24, cols: 80 })
}

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Stdin in raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enable() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Output still queued for the terminal is written first (TCSADRAIN), then the settings.
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}
