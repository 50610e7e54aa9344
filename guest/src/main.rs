//! `banger-agent`: the guest's initrd `/init` and agent. For now it only reports its version;
//! the init (module loading, switch_root, PID 1 duties) and the agent protocol come with the
//! guest issue. It will be linked statically (`+crt-static`) and must never panic.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version" | "-V") => {
            println!("banger-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: banger-agent --version");
            ExitCode::from(2)
        }
    }
}
