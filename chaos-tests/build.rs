//! Assembles the test kernel (testkernel/kernel.S) into an ELF the tests boot under
//! Firecracker; its path is `env!("BANGER_TEST_KERNEL")`. Also a static stand-in for the guest
//! agent (testkernel/agent.S), `env!("BANGER_TEST_AGENT")`. Needs binutils (`as`, `ld`).

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
    assert!(status.success(), "{cmd:?} failed");
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out.join("kernel.o");
    let kernel = out.join("vmlinux");
    println!("cargo:rerun-if-changed=testkernel/kernel.S");
    println!("cargo:rerun-if-changed=testkernel/kernel.ld");
    run(Command::new("as").args(["--64", "-o"]).arg(&object).arg("testkernel/kernel.S"));
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T", "testkernel/kernel.ld", "-o"])
        .arg(&kernel)
        .arg(&object));
    println!("cargo:rustc-env=BANGER_TEST_KERNEL={}", kernel.display());
    println!("cargo:rerun-if-changed=testkernel/agent.S");
    let (object, agent) = (out.join("agent.o"), out.join("banger-agent-stand-in"));
    run(Command::new("as").args(["--64", "-o"]).arg(&object).arg("testkernel/agent.S"));
    run(Command::new("ld").args(["-m", "elf_x86_64", "-static", "-o"]).arg(&agent).arg(&object));
    println!("cargo:rustc-env=BANGER_TEST_AGENT={}", agent.display());
}
