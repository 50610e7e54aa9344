//! How results and errors reach the user: colour only on a terminal and never with NO_COLOR;
//! JSON on stdout with `--json`, errors included, so scripts never parse prose.

use std::io::IsTerminal;

use serde::Serialize;

use crate::escape::escape;

/// NO_COLOR (https://no-color.org): any non-empty value turns colour off.
fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub struct Output {
    pub json: bool,
    colour: bool,
}

pub enum Tone {
    Good,
    Warn,
    Bad,
    Dim,
}

impl Output {
    pub fn new(json: bool) -> Self {
        let colour = !json && colour_allowed() && std::io::stdout().is_terminal();
        Output { json, colour }
    }

    pub fn paint(&self, tone: Tone, text: &str) -> String {
        if !self.colour {
            return text.to_string();
        }
        let code = match tone {
            Tone::Good => "32",
            Tone::Warn => "33",
            Tone::Bad => "31;1",
            Tone::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    pub fn json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("banger: cannot encode JSON: {e}"),
        }
    }

    /// Reports a removal: `{"removed": name}`, or `removed <what>`.
    pub fn removed(&self, name: &str, what: &str) {
        if self.json {
            self.json(&serde_json::json!({ "removed": name }));
        } else {
            println!("removed {}", escape(what));
        }
    }

    pub fn error(&self, e: &protocol::Error) {
        if self.json {
            self.json(&serde_json::json!({ "error": e }));
            return;
        }
        let colour = colour_allowed() && std::io::stderr().is_terminal();
        let (err, hint) =
            if colour { ("\x1b[31;1merror:\x1b[0m", "\x1b[36mhint:\x1b[0m") } else { ("error:", "hint:") };
        // A daemon's message quotes what it was sent and what a registry or layer said.
        eprintln!("{err} {}", escape(&e.message));
        if let Some(h) = &e.hint {
            eprintln!("{hint} {}", escape(h));
        }
    }
}
