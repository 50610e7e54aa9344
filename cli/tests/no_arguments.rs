//! `banger` with no arguments: the getting-started commands on stdout, exit 0, no daemon needed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

#[test]
fn banger_alone_prints_the_first_commands_and_succeeds() {
    // A socket that does not exist: nothing may try to reach a daemon.
    let out = Command::new(env!("CARGO_BIN_EXE_banger"))
        .env("BANGER_SOCKET", "/nonexistent/bangerd.sock")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    // The five commands, in the order a new user runs them.
    let steps =
        ["banger daemon start", "banger kernel import", "banger vm run", "banger vm ssh", "banger vm rm"];
    let mut from = 0;
    for step in steps {
        let at = stdout[from..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{stdout}"));
        from += at + step.len();
    }
    assert!(stdout.contains("docs/getting-started.md"), "{stdout}");
    // Every one of them is a real command: its --help succeeds.
    for step in steps {
        let args: Vec<&str> = step.split(' ').skip(1).collect();
        let help = Command::new(env!("CARGO_BIN_EXE_banger")).args(&args).arg("--help").output().unwrap();
        assert!(help.status.success(), "banger {} --help failed", args.join(" "));
    }
}

#[test]
fn an_unknown_command_still_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_banger")).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
