//! Small system helpers: logging that never panics, `CLOCK_BOOTTIME`, the guest's RNG and clock.

use std::time::Duration;

/// Writes a line to stderr (the console as PID 1). Unlike `eprintln!`, never panics.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "banger-agent: {}", format_args!($($arg)*));
    }};
}

/// Microseconds since the kernel started (`CLOCK_BOOTTIME`).
pub fn boottime_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::from(t).as_micros().try_into().unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// Sets the wall clock (the guest has no trustworthy RTC).
pub fn set_clock(unix_time_ns: u64) -> nix::Result<()> {
    let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(unix_time_ns));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

mod ioctls {
    // RNDADDENTROPY = _IOW('R', 0x03, int[2]); RNDRESEEDCRNG = _IO('R', 0x07).
    nix::ioctl_write_ptr_bad!(rnd_add_entropy, nix::request_code_write!(b'R', 0x03, 8), libc::c_int);
    nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
}

/// Credits `seed` to the kernel's entropy pool and reseeds the CRNG from it (as Kata does).
pub fn seed_rng(seed: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if seed.is_empty() {
        return Ok(());
    }
    let seed = seed.get(..4096).unwrap_or(seed);
    let file = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<libc::c_int> = Vec::with_capacity(2 + seed.len().div_ceil(4));
    let bytes = libc::c_int::try_from(seed.len()).unwrap_or(0);
    info.push(bytes.saturating_mul(8));
    info.push(bytes);
    for chunk in seed.chunks(4) {
        let mut word = [0u8; 4];
        for (w, b) in word.iter_mut().zip(chunk) {
            *w = *b;
        }
        info.push(libc::c_int::from_ne_bytes(word));
    }
    // SAFETY: `info` is a rand_pool_info header followed by `bytes` bytes of buffer, alive for
    // the call; the kernel reads at most buf_size bytes past the header.
    unsafe { ioctls::rnd_add_entropy(file.as_raw_fd(), info.as_ptr()) }?;
    // SAFETY: an argument-less ioctl on a descriptor we own.
    unsafe { ioctls::rnd_reseed_crng(file.as_raw_fd()) }?;
    Ok(())
}

/// The host name, for `Ready`.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Raises the soft limit on open files to the hard one (each exec holds a few descriptors).
pub fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
