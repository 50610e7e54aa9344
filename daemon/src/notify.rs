//! sd-notify: READY, STATUS, WATCHDOG and STOPPING for `Type=notify` units. Every call is a
//! no-op when `NOTIFY_SOCKET` is unset (not under systemd, or a test that does not listen).

use std::time::Duration;

use sd_notify::NotifyState;
use slog::{Logger, warn};

pub struct Notifier {
    log: Logger,
    /// Half the watchdog interval systemd asked for, if it asked.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    pub fn from_env(log: Logger) -> Self {
        Notifier { log, watchdog_every: sd_notify::watchdog_enabled().map(|d| d / 2) }
    }

    fn send(&self, state: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(state) {
            warn!(self.log, "sd-notify failed"; "error" => %e);
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
