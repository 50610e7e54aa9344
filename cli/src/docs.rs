//! The CLI reference (`docs/cli-reference.md`) and the man pages (`docs/man/*.1`), generated
//! from the clap definitions in `args.rs`: one section and one page per command and subcommand,
//! found by walking the tree, so a new command needs no change here, only `scripts/dev docs`.
//!
//! `banger system install` writes the man pages from here too. The test
//! `docs_match_the_clap_definitions` fails when the committed files differ from what the
//! definitions generate now; with `BANGER_UPDATE_DOCS=1` (what `scripts/dev docs` sets) it
//! writes them instead. Nothing in the output changes between runs: no dates, and the version
//! comes from Cargo.toml.

use std::collections::BTreeMap;
#[cfg(test)]
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::args::Cli;

/// The command that regenerates the files; the stale-docs failure names it.
#[cfg(test)]
const REGENERATE: &str = "scripts/dev docs";

/// The whole tree, built (so each subcommand knows its full name and the global flags), without
/// clap's own `help` subcommand, and without the values of variables like BANGER_SOCKET that
/// happen to be set where it is generated.
fn root() -> clap::Command {
    fn hide_env_values(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
        let mut cmd = cmd.mut_args(|a| a.hide_env_values(true));
        for name in names {
            cmd = cmd.mut_subcommand(name, hide_env_values);
        }
        cmd
    }
    let mut cmd = hide_env_values(Cli::command().disable_help_subcommand(true));
    cmd.build();
    cmd
}

/// Every visible command, the root first, then each subcommand after its parent, in the order
/// `args.rs` declares them.
fn every_command() -> Vec<clap::Command> {
    fn walk(cmd: &clap::Command, all: &mut Vec<clap::Command>) {
        all.push(cmd.clone());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, all);
        }
    }
    let mut all = Vec::new();
    walk(&root(), &mut all);
    all
}

/// "banger vm run": the words a user types.
#[cfg(test)]
fn path(cmd: &clap::Command) -> String {
    cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()).to_string()
}

/// `banger.1`, `banger-vm.1`, `banger-vm-run.1`… with their roff text.
pub fn man_pages() -> BTreeMap<String, Vec<u8>> {
    every_command()
        .into_iter()
        .map(|cmd| {
            // clap_mangen heads the after_help "EXTRA"; ours is examples, after notes on some.
            let after = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            let heading = if after.starts_with("Examples:") { "EXAMPLES" } else { "NOTES AND EXAMPLES" };
            let man = clap_mangen::Man::new(cmd)
                .source(format!("banger {}", env!("CARGO_PKG_VERSION")))
                .manual("banger manual");
            let mut page = Vec::new();
            // Rendering into memory cannot fail.
            let _ = man.render(&mut page);
            let page =
                String::from_utf8_lossy(&page).replacen("\n.SH EXTRA\n", &format!("\n.SH {heading}\n"), 1);
            (man.get_filename(), page.into_bytes())
        })
        .collect()
}

#[cfg(test)]
/// docs/cli-reference.md: a contents list, then each command's `--help` as `banger` prints it
/// (about, usage, arguments, options, examples).
fn reference() -> String {
    let commands = every_command();
    let mut md = String::from(
        "# banger CLI reference\n\n\
         Generated from the clap definitions in `cli/src/args.rs` by `scripts/dev docs`; do not edit \
         by hand (a test fails when this file is stale). Each command's text is its `--help`; the \
         same pages are in `docs/man/` as man pages (`man ./docs/man/banger-vm-run.1`). New here? \
         Start with [getting-started.md](getting-started.md).\n\n",
    );
    for cmd in &commands {
        let p = path(cmd);
        let depth = p.split(' ').count() - 1;
        let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        md.push_str(&format!("{}- [`{p}`](#{}): {about}\n", "  ".repeat(depth), anchor(&p)));
    }
    for cmd in commands {
        let p = path(&cmd);
        let help = cmd.clone().render_long_help().to_string();
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        md.push_str(&format!("\n## {p}\n\n```text\n{}\n```\n", help.join("\n").trim_end()));
    }
    md
}

/// GitHub's anchor for a heading "banger vm run": "banger-vm-run".
#[cfg(test)]
fn anchor(heading: &str) -> String {
    heading.to_lowercase().replace(' ', "-")
}

#[cfg(test)]
fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

#[test]
#[allow(clippy::unwrap_used)] // test code: a panic is the failure report
fn docs_match_the_clap_definitions() {
    let docs = docs_dir();
    let man_dir = docs.join("man");
    let reference_path = docs.join("cli-reference.md");
    let pages = man_pages();
    let reference = reference();

    if std::env::var_os("BANGER_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(&man_dir).unwrap();
        for entry in std::fs::read_dir(&man_dir).unwrap() {
            let file = entry.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".1") && !pages.contains_key(&name) {
                std::fs::remove_file(&file).unwrap();
            }
        }
        for (name, page) in &pages {
            std::fs::write(man_dir.join(name), page).unwrap();
        }
        std::fs::write(&reference_path, &reference).unwrap();
        return;
    }

    let mut stale = Vec::new();
    if std::fs::read_to_string(&reference_path).ok().as_deref() != Some(reference.as_str()) {
        stale.push("docs/cli-reference.md".to_string());
    }
    for (name, page) in &pages {
        if std::fs::read(man_dir.join(name)).ok().as_deref() != Some(page.as_slice()) {
            stale.push(format!("docs/man/{name}"));
        }
    }
    for entry in std::fs::read_dir(&man_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".1") && !pages.contains_key(&name) {
            stale.push(format!("docs/man/{name} (no such command any more)"));
        }
    }
    assert!(
        stale.is_empty(),
        "the CLI reference and man pages differ from the clap definitions: run `{REGENERATE}` and \
         commit the result. Stale:\n  {}",
        stale.join("\n  ")
    );
}

#[test]
#[allow(clippy::unwrap_used)]
fn every_command_has_a_page_and_a_section() {
    let pages = man_pages();
    for name in
        ["banger.1", "banger-vm.1", "banger-vm-run.1", "banger-vm-port-add.1", "banger-image-cache-prune.1"]
    {
        assert!(pages.contains_key(name), "no {name} among {:?}", pages.keys());
    }
    assert!(!pages.contains_key("banger-help.1"), "clap's help subcommand is not a command");
    let reference = reference();
    for cmd in every_command() {
        let heading = format!("\n## {}\n", path(&cmd));
        assert!(reference.contains(&heading), "no {heading:?} in the reference");
    }
    // Each page carries the command's examples, and nothing that changes between runs.
    let run = String::from_utf8(pages["banger-vm-run.1"].clone()).unwrap();
    assert!(run.contains("banger vm run \\-\\-rm \\-it debian:12"), "{run}");
    assert!(run.contains(&format!("banger {}", env!("CARGO_PKG_VERSION"))), "{run}");
    assert_eq!(man_pages(), pages);
}
