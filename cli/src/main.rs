//! `banger`: the command line. Thin: parse, call the daemon, print. Every failure is a typed
//! [`protocol::Error`] printed as a message and a hint, with an exit code chosen by its kind.

mod accounts;
mod archive;
mod args;
mod auth;
mod client;
mod commands;
mod docs;
mod doctor;
mod escape;
mod exec_args;
mod names;
mod output;
mod progress;
mod session;
mod systemd;
mod tty;
mod workspace;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// The first line of `banger --help`: the name, the version and what banger is.
fn about() -> String {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    format!("banger {}: {about}", env!("CARGO_PKG_VERSION"))
}
use crate::output::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        print!("{}\n\n{}\n\nRun `banger --help` for every command.\n", about(), args::GETTING_STARTED);
        return ExitCode::SUCCESS;
    };
    let out = Output::new(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out.error(&protocol::Error::internal(format!("cannot start a runtime: {e}")));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let done = |r: Result<(), protocol::Error>| r.map(|()| 0);
        match command {
            Command::Vm(args::VmCommand::Exec(a)) => commands::exec::run(&cli.global, a).await,
            Command::Vm(args::VmCommand::Run(a)) => commands::run::run(&cli.global, a, &out).await,
            Command::Vm(args::VmCommand::Ssh { name, direct, command }) => {
                commands::ssh::ssh(&cli.global, &name, direct, command).await
            }
            Command::Vm(args::VmCommand::Proxy { name, port }) => {
                commands::ssh::proxy(&cli.global, &name, port).await
            }
            Command::Vm(args::VmCommand::Port(cmd)) => {
                done(commands::port::run(&cli.global, cmd, &out).await)
            }
            Command::SshConfig(cmd) => done(commands::ssh::config(&cli.global, cmd, &out)),
            Command::Vm(args::VmCommand::Cp { src, dst }) => {
                commands::cp::run(&cli.global, &src, &dst, &out).await
            }
            Command::Vm(args::VmCommand::Workspace(cmd)) => {
                done(commands::workspace::run(&cli.global, cmd, &out).await)
            }
            Command::Version => done(commands::version::run(&cli.global, &out).await),
            Command::Daemon(cmd) => done(commands::daemon::run(&cli.global, cmd, &out).await),
            Command::Image(cmd) => done(commands::image::run(&cli.global, cmd, &out).await),
            Command::Vm(cmd) => done(commands::vm::run(&cli.global, cmd, &out).await),
            Command::Kernel(cmd) => done(commands::kernel::run(&cli.global, cmd, &out).await),
            Command::Ps { all } => {
                done(commands::vm::run(&cli.global, args::VmCommand::Ls { all }, &out).await)
            }
            Command::Rm { name, force } => {
                done(commands::vm::run(&cli.global, args::VmCommand::Rm { name, force }, &out).await)
            }
            Command::Prune { force } => done(commands::vm::prune(&cli.global, force, &out).await),
            Command::System(cmd) => done(commands::system::run(&cli.global, cmd, &out).await),
            Command::Doctor => commands::doctor::run(&cli.global, &out).await,
            Command::Completion { shell } => done(commands::completion::run(shell)),
        }
    });
    match result {
        // A guest process's code, or 128 + a signal's number: always within 0..=255.
        Ok(code) => ExitCode::from(code.rem_euclid(256) as u8),
        Err(e) => {
            out.error(&e);
            ExitCode::from(e.kind.exit_code() as u8)
        }
    }
}
