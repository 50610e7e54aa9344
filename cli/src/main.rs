//! `banger`: the command line. Thin: parse, call the daemon, print. Every failure is a typed
//! [`protocol::Error`] printed as a message and a hint, with an exit code chosen by its kind.

mod args;
mod auth;
mod client;
mod commands;
mod escape;
mod output;
mod progress;
mod systemd;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::output::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out.error(&protocol::Error::internal(format!("cannot start a runtime: {e}")));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Version => commands::version::run(&cli.global, &out).await,
            Command::Daemon(cmd) => commands::daemon::run(&cli.global, cmd, &out).await,
            Command::Image(cmd) => commands::image::run(&cli.global, cmd, &out).await,
            Command::Vm(cmd) => commands::vm::run(&cli.global, cmd, &out).await,
            Command::Kernel(cmd) => commands::kernel::run(&cli.global, cmd, &out).await,
            Command::Ps { all } => commands::vm::run(&cli.global, args::VmCommand::Ls { all }, &out).await,
            Command::Rm { name, force } => {
                commands::vm::run(&cli.global, args::VmCommand::Rm { name, force }, &out).await
            }
            Command::Prune { force } => commands::vm::prune(&cli.global, force, &out).await,
            Command::System(args::SystemCommand::Uninstall) => {
                commands::vm::system_uninstall(&cli.global, &out).await
            }
            Command::Completion { shell } => commands::completion::run(shell),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            ExitCode::from(e.kind.exit_code() as u8)
        }
    }
}
