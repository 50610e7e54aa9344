//! `banger vm exec`, and the streaming `vm run` shares with it: output to the right
//! descriptors, stdin as it arrives, signals and window sizes passed on, the exit code back.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use protocol::daemon::Request;
use protocol::exec::{ExecEvent, ExecInput, ExecSpec, OutputStream};
use protocol::{Error, ErrorKind};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::args::{ExecArgs, ExecOpts, Global};
use crate::exec_args::merge_env;
use crate::session::{Ending, STDIN_CHUNK, Session};
use crate::tty;

/// A second Ctrl-C within this long leaves at once instead of being passed on.
const DOUBLE_INTERRUPT: Duration = Duration::from_secs(1);

/// Exit code when our own stdout is closed under us (as a shell reports SIGPIPE).
const EXIT_BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

pub async fn run(global: &Global, args: ExecArgs) -> Result<i32, Error> {
    check_tty(&args.opts)?;
    let spec = spec(args.command, &[], &args.opts, None, None);
    let name = args.name.clone();
    let request = Request::VmExec { name: args.name, spec };
    let signals = Signals::watch()?;
    let socket = global.socket();
    let session = Session::open(&socket, &request).await?;
    // Once the exec is asked for (its output waits in the daemon meanwhile), so the note comes
    // before any of it.
    crate::commands::workspace::check_before_exec(socket, name).await;
    Ok(stream(session, signals, &args.opts).await?.report())
}

/// `-t` needs a terminal to take keys from, as docker says.
pub fn check_tty(opts: &ExecOpts) -> Result<(), Error> {
    if opts.tty && opts.interactive && !tty::stdin_is_terminal() {
        return Err(Error::new(ErrorKind::InvalidInput, "the input device is not a terminal (-t with -i)")
            .with_hint("drop -t to pipe data in, or run banger from a terminal"));
    }
    Ok(())
}

/// What to run: `argv` with `base_env` plus `-e`, the image's `workdir`/`user` unless `-w`/`-u`.
pub fn spec(
    argv: Vec<String>,
    base_env: &[String],
    opts: &ExecOpts,
    workdir: Option<&str>,
    user: Option<&str>,
) -> ExecSpec {
    let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    ExecSpec {
        argv,
        env: merge_env(base_env, &opts.env),
        cwd: opts.workdir.clone().or_else(|| non_empty(workdir)),
        user: opts.user.clone().or_else(|| non_empty(user)),
        tty: opts.tty.then(tty::current_size),
        stdin: opts.interactive,
    }
}

/// The signals an exec passes on, watched from before the exec starts: one that arrives while
/// it starts is passed on too, rather than killing `banger` with its default action.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    winch: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn watch() -> Result<Signals, Error> {
        let signal_err = |e: std::io::Error| Error::internal(format!("cannot watch signals: {e}"));
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).map_err(signal_err)?,
            terminate: signal(SignalKind::terminate()).map_err(signal_err)?,
            hangup: signal(SignalKind::hangup()).map_err(signal_err)?,
            winch: signal(SignalKind::window_change()).map_err(signal_err)?,
        })
    }
}

/// Streams an exec until it ends. The terminal is raw (with `-it`) only inside this call.
pub async fn stream(mut session: Session, signals: Signals, opts: &ExecOpts) -> Result<Ending, Error> {
    let _raw = if opts.tty && opts.interactive {
        Some(
            tty::RawMode::enable()
                .map_err(|e| Error::internal(format!("cannot put the terminal in raw mode: {e}")))?,
        )
    } else {
        None
    };
    if opts.interactive {
        read_stdin(session.input());
    }
    let Signals { mut interrupt, mut terminate, mut hangup, mut winch } = signals;
    let input = session.input();
    let mut last_interrupt: Option<Instant> = None;
    loop {
        tokio::select! {
            event = session.next() => match event? {
                Some(ExecEvent::Started { .. }) => {}
                Some(ExecEvent::Output { stream, data }) => {
                    // Our own stdout closed under us: leave (the daemon kills the process).
                    if let Err(e) = write_out(stream, &data)
                        && e.kind() == std::io::ErrorKind::BrokenPipe
                    {
                        return Ok(Ending::Exited(EXIT_BROKEN_PIPE));
                    }
                }
                Some(ExecEvent::Exited(status)) => return Ok(Ending::Exited(status.code())),
                Some(ExecEvent::Failed { code, message }) => return Ok(Ending::Failed { code, message }),
                None => {
                    return Err(Error::new(ErrorKind::Protocol, "the exec's reply stream ended without an exit status")
                        .with_hint("the client and daemon may be out of step; compare `banger version`"));
                }
            },
            _ = interrupt.recv() => {
                if last_interrupt.is_some_and(|t| t.elapsed() < DOUBLE_INTERRUPT) {
                    // Leaving closes the connection, and the daemon kills the process.
                    return Ok(Ending::Exited(128 + libc::SIGINT));
                }
                last_interrupt = Some(Instant::now());
                let _ = input.send(ExecInput::Signal(libc::SIGINT)).await;
            }
            _ = terminate.recv() => { let _ = input.send(ExecInput::Signal(libc::SIGTERM)).await; }
            _ = hangup.recv() => { let _ = input.send(ExecInput::Signal(libc::SIGHUP)).await; }
            _ = winch.recv(), if opts.tty => {
                let _ = input.send(ExecInput::Resize(tty::current_size())).await;
            }
        }
    }
}

fn write_out(stream: OutputStream, data: &[u8]) -> std::io::Result<()> {
    match stream {
        OutputStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(data)?;
            out.flush()
        }
        OutputStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(data)?;
            err.flush()
        }
    }
}

/// Sends stdin as it arrives, each read as one message of at most [`STDIN_CHUNK`] bytes (on a
/// raw terminal a read is a keystroke or a paste), then `CloseStdin` at end-of-file. A thread
/// of its own: a blocked read must never hold up the runtime or the process's exit.
pub fn read_stdin(input: mpsc::Sender<ExecInput>) {
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if input.blocking_send(ExecInput::Stdin(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = input.blocking_send(ExecInput::CloseStdin);
    });
    if let Err(e) = spawned {
        eprintln!("banger: cannot read stdin: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_args::parse_env;

    #[test]
    fn the_spec_takes_the_images_settings_unless_overridden() {
        let opts = ExecOpts::default();
        let image_env = vec!["PATH=/bin".to_string(), "MODE=prod".to_string()];
        let s = spec(vec!["app".into()], &image_env, &opts, Some("/srv"), Some("www"));
        assert_eq!((s.cwd.as_deref(), s.user.as_deref()), (Some("/srv"), Some("www")));
        assert_eq!(s.env, image_env);
        assert!(s.tty.is_none() && !s.stdin);
        let opts = ExecOpts {
            interactive: true,
            env: vec![parse_env("MODE=dev").unwrap_or_else(|e| panic!("{e}"))],
            workdir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            ..Default::default()
        };
        let s = spec(vec!["app".into()], &image_env, &opts, Some("/srv"), Some(""));
        assert_eq!((s.cwd.as_deref(), s.user.as_deref()), (Some("/tmp"), Some("1000:1000")));
        assert_eq!(s.env, ["PATH=/bin", "MODE=dev"]);
        assert!(s.stdin);
        let s = spec(vec!["app".into()], &[], &ExecOpts::default(), Some(""), Some(""));
        assert_eq!((s.cwd, s.user), (None, None), "an image's empty workdir and user mean the defaults");
    }
}
