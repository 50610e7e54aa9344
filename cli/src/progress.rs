//! Pull progress as a person or a script wants it: bars on a terminal (per layer and total,
//! with speed), one plain line per step otherwise, one JSON object per line with `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::image::PullEvent;
use serde_json::json;

use crate::escape::escape;

pub enum Progress {
    Json,
    Plain,
    Bars { multi: MultiProgress, layers: HashMap<String, ProgressBar>, total: Option<ProgressBar> },
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    hex.get(..12).unwrap_or(hex)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

impl Progress {
    pub fn new(json: bool) -> Self {
        if json {
            Progress::Json
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            Progress::Bars { multi, layers: HashMap::new(), total: None }
        } else {
            Progress::Plain
        }
    }

    pub fn event(&mut self, event: &PullEvent) {
        match self {
            Progress::Json => println!("{}", json!({ "event": event })),
            Progress::Plain => plain(event),
            Progress::Bars { multi, layers, total } => bars(multi, layers, total, event),
        }
    }

    pub fn finish(&mut self) {
        if let Progress::Bars { multi, .. } = self {
            let _ = multi.clear();
        }
    }
}

fn plain(event: &PullEvent) {
    match event {
        PullEvent::Resolved { manifest_digest, layers } => {
            let cached = layers.iter().filter(|l| l.cached).count();
            let bytes: u64 = layers.iter().filter(|l| !l.cached).map(|l| l.size).sum();
            eprintln!(
                "resolved {}: {} layer(s), {cached} cached, {} to fetch",
                escape(manifest_digest),
                layers.len(),
                human_bytes(bytes)
            );
        }
        PullEvent::Verified { digest } => eprintln!("fetched {}", escape(short(digest))),
        PullEvent::Retrying { digest, attempt, error } => {
            eprintln!("retrying {} (attempt {attempt}): {}", escape(short(digest)), escape(error))
        }
        PullEvent::WaitingForPrune => eprintln!("waiting for a cache prune to finish"),
        PullEvent::Stage { name } => eprintln!("{}", escape(name)),
        PullEvent::Progress { .. } => {}
    }
}

fn bars(
    multi: &MultiProgress,
    layers: &mut HashMap<String, ProgressBar>,
    total: &mut Option<ProgressBar>,
    event: &PullEvent,
) {
    let style = |t: &str| ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar());
    match event {
        PullEvent::Resolved { layers: ls, .. } => {
            for l in ls.iter().filter(|l| !l.cached) {
                let bar = multi.add(ProgressBar::new(l.size));
                bar.set_style(style("{prefix} [{bar:30}] {bytes}/{total_bytes}"));
                bar.set_prefix(escape(short(&l.digest)).into_owned());
                layers.insert(l.digest.clone(), bar);
            }
            let sum = ls.iter().filter(|l| !l.cached).map(|l| l.size).sum();
            let bar = multi.add(ProgressBar::new(sum));
            bar.set_style(style("total        [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"));
            *total = Some(bar);
        }
        PullEvent::Progress { digest, done, .. } => {
            if let Some(bar) = layers.get(digest) {
                let delta = done.saturating_sub(bar.position());
                bar.set_position(*done);
                if let Some(t) = total {
                    t.inc(delta);
                }
            }
        }
        PullEvent::Verified { digest } => {
            if let Some(bar) = layers.get(digest) {
                bar.finish();
            }
        }
        PullEvent::Retrying { digest, attempt, error } => {
            let _ = multi.println(format!(
                "retrying {} (attempt {attempt}): {}",
                escape(short(digest)),
                escape(error)
            ));
        }
        PullEvent::WaitingForPrune => {
            let _ = multi.println("waiting for a cache prune to finish");
        }
        PullEvent::Stage { name } => {
            let _ = multi.println(escape(name));
        }
    }
}
