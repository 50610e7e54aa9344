//! PID 1 in the guest: the initrd stage (if `/` is the initramfs), the system's mounts,
//! hostname and network; then it starts the agent's server as a child and, for the life of the
//! guest, takes signals, reaps orphans, and starts the server again if it dies (a process
//! killed inside the guest must not take PID 1, and so the kernel, with it). Both keep serving
//! when the workload eats the CPU or memory (raised priority, `oom_score_adj` -1000; execs get
//! both reset); the server powers off cleanly on request.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::agent::BootTimings;

use crate::cmdline::BootConfig;
use crate::reaper::Reaper;
use crate::session::Agent;

pub fn run() -> ! {
    let init_us = crate::sys::boottime_us();
    mount_if_missing("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"));
    console_fds();
    mount_if_missing(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );
    mount_if_missing(
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );
    let (config, complaints) =
        crate::cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for c in complaints {
        crate::log!("{c}");
    }
    let mut timings = BootTimings { init_us, modules_us: None, root_us: None, listening_us: 0, ready_us: 0 };
    if crate::init::in_initramfs() {
        match crate::init::switch_root(&config) {
            Ok(t) => {
                timings.modules_us = Some(t.modules_us);
                timings.root_us = Some(t.root_us);
            }
            Err(e) => crate::log!("{e}; staying in the initramfs"),
        }
    }
    setup(&config);
    let reaper = Arc::new(Reaper::default());
    start_server(&reaper, timings);
    crate::signals::run(&reaper, &|signal| {
        // SIGTERM / SIGINT (Ctrl-Alt-Del) and the like: pass them on to every process.
        let _ = kill(Pid::from_raw(-1), signal);
    })
}

/// Forks the agent's server; when it exits, starts another. PID 1 stays single-threaded, so
/// forking it is safe. A failed fork is retried until one works (the workload may have taken
/// every pid; reaping frees some): without its server the guest cannot be reached.
fn start_server(reaper: &Arc<Reaper>, timings: BootTimings) {
    loop {
        let (again, first, next) = (reaper.clone(), timings.clone(), timings.clone());
        let fork = move || {
            // SAFETY: PID 1 has no other thread; the child runs `server` and never returns here.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => server(first),
                Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
                Err(e) => Err(e),
            }
        };
        let on_exit: crate::reaper::OnExit = Box::new(move |status| {
            crate::log!("the agent's server ended ({status:?}); starting it again");
            // Not in a tight loop, should it die at once every time.
            std::thread::sleep(Duration::from_millis(100));
            start_server(&again, next);
        });
        match reaper.spawn(fork, on_exit) {
            Ok(_) => return,
            Err(e) => crate::log!("cannot start the agent's server: {e}; trying again"),
        }
        reaper.reap();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The agent's server, in its own process: the protocol on the channel, and the execs as its
/// children (it reaps them; their orphans go to PID 1).
fn server(timings: BootTimings) -> ! {
    let reaper = Arc::new(Reaper::default());
    let r = reaper.clone();
    let ssh = crate::ssh::setup::Ssh::new("/".into(), 22, reaper.clone(), true);
    let agent = Arc::new(Agent {
        reaper: reaper.clone(),
        guest: true,
        ssh: Some(Arc::new(ssh)),
        timings: Mutex::new(timings),
        ready_once: OnceLock::new(),
        power_off: Box::new(move || power_off(&r)),
    });
    let a = agent.clone();
    if let Err(e) = std::thread::Builder::new().name("sessions".into()).spawn(move || serve(&a)) {
        crate::log!("cannot start the agent: {e}");
        std::process::exit(1);
    }
    crate::signals::run(&reaper, &|signal| {
        // Told to stop (PID 1 passes on what it is sent): its execs go with it.
        crate::log!("the agent's server stops on {signal}");
        crate::signals::kill_children(&reaper, Duration::from_secs(1));
        std::process::exit(0);
    })
}

/// Finds the channel (waiting for it if the modules are still settling) and serves hosts.
fn serve(agent: &Agent) {
    let started = Instant::now();
    let listener = loop {
        match crate::channel::Listener::guest() {
            Ok(l) => break l,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(2)
                    && started.elapsed() < Duration::from_millis(2100)
                {
                    crate::log!(
                        "no channel to the host yet (no port named {}, no vsock: {e})",
                        protocol::agent::PORT_NAME
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    crate::log!("listening on {}", listener.describe());
    crate::exec::lock(&agent.timings).listening_us = crate::sys::boottime_us();
    crate::serve_forever(agent, &listener);
}

fn setup(config: &BootConfig) {
    // Before any thread exists, so that all inherit them.
    // SAFETY: setpriority with integer arguments.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        crate::log!("cannot set oom_score_adj: {e}");
    }
    crate::sys::raise_nofile();
    // Ctrl-Alt-Del sends SIGINT to init instead of rebooting at once.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let _ = std::fs::create_dir_all("/dev/pts");
    mount_if_missing(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    let _ = std::fs::create_dir_all("/dev/shm");
    mount_if_missing("shm", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"));
    mount_if_missing("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"));
    mount_if_missing("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"));
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    if let Some(name) = &config.hostname
        && let Err(e) = nix::unistd::sethostname(name)
    {
        crate::log!("cannot set the hostname: {e}");
    }
    crate::net::configure(config);
    if let Some(dns) = config.dns {
        let empty = std::fs::read_to_string("/etc/resolv.conf").map_or(true, |t| t.trim().is_empty());
        if empty {
            // A dangling symlink (systemd-resolved's) is replaced.
            let _ = std::fs::remove_file("/etc/resolv.conf");
            if let Err(e) = std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n")) {
                crate::log!("cannot write /etc/resolv.conf: {e}");
            }
        }
    }
}

/// The mount points in `/proc/self/mounts`.
fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect()
}

fn mount_if_missing(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    // Before /proc is mounted there is no list: then nothing is mounted yet.
    if mount_points().iter().any(|m| m == target) {
        return;
    }
    let _ = std::fs::create_dir_all(target);
    if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
        crate::log!("cannot mount {fstype} on {target}: {e}");
    }
}

/// Makes sure fds 0, 1 and 2 are open (on the console), so that no file the agent opens later
/// becomes someone's stdout.
fn console_fds() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let open = |fd: i32| nix::fcntl::fcntl(unsafe_borrow(fd), nix::fcntl::FcntlArg::F_GETFD).is_ok();
    if (0..3).all(open) {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") else { return };
    for fd in 0..3 {
        if !open(fd) {
            // SAFETY: dup2 onto a descriptor number that is not open.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
    if console.as_raw_fd() > 2 {
        drop(console);
    } else {
        let _ = console.into_raw_fd(); // it is one of 0, 1, 2 now
    }
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for F_GETFD, which is harmless on a descriptor that is not open.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// User processes still alive (kernel threads have an empty command line).
fn user_processes() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != 1 && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
        .collect()
}

/// Stops every process, unmounts, and powers off. Never returns.
pub fn power_off(reaper: &Reaper) -> ! {
    crate::log!("powering off");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !user_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        reaper.reap();
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    reaper.reap();
    nix::unistd::sync();
    let mut points = mount_points();
    points.reverse();
    for m in points.iter().filter(|m| !matches!(m.as_str(), "/" | "/proc" | "/sys" | "/dev")) {
        if nix::mount::umount(Path::new(m)).is_err() {
            let _ = nix::mount::umount2(Path::new(m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, ro, None::<&str>) {
        crate::log!("cannot remount / read-only: {e}");
    }
    nix::unistd::sync();
    // Without ACPI (Firecracker, QEMU microvm with acpi=off) power-off only halts the CPU and
    // the VMM keeps running; a reset is what makes those VMMs exit.
    let mode = if Path::new("/sys/firmware/acpi").exists() {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    let _ = nix::sys::reboot::reboot(mode);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
