//! `banger doctor`: run the checks, print each with its fix, exit non-zero when a VM could not be
//! created.

use protocol::{Error, ErrorKind};

use crate::args::Global;
use crate::doctor::{self, Status};
use crate::output::{Output, Tone};

pub async fn run(global: &Global, out: &Output) -> Result<i32, Error> {
    let report = doctor::run(&global.layout(), &global.socket()).await;
    if out.json {
        out.json(&report);
    } else {
        for c in &report.checks {
            let (tone, label) = match c.status {
                Status::Ok => (Tone::Good, "ok  "),
                Status::Warn => (Tone::Warn, "warn"),
                Status::Fail => (Tone::Bad, "fail"),
            };
            println!("{} {:<11} {}", out.paint(tone, label), c.name, c.finding);
            if let Some(fix) = &c.fix {
                println!("     {:<11} {} {fix}", "", out.paint(Tone::Dim, "fix:"));
            }
        }
    }
    if report.ok {
        return Ok(0);
    }
    if !out.json {
        let blocking: Vec<&str> = report.checks.iter().filter(|c| c.blocking).map(|c| c.name).collect();
        let e = Error::new(
            ErrorKind::Unavailable,
            format!("VMs cannot be created here yet: see {}", blocking.join(", ")),
        );
        out.error(&e.with_hint("run each `fix:` above, then `banger doctor` again"));
    }
    Ok(1)
}
