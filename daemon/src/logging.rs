//! slog set-up: a human format on a terminal, JSON lines for the service (journald keeps them).

use std::io::IsTerminal;

use slog::{Drain, Logger, o};

use crate::config::LogFormat;

pub fn build(format: LogFormat, level: slog::Level) -> Logger {
    let human = match format {
        LogFormat::Human => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::io::stderr().is_terminal(),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if human {
        if std::io::stderr().is_terminal() {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        } else {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
    } else {
        Box::new(slog_json::Json::new(std::io::stderr()).add_default_keys().set_flush(true).build().fuse())
    };
    let drain = slog_async::Async::new(drain.filter_level(level).fuse()).chan_size(4096).build().fuse();
    Logger::root(drain, o!("pid" => std::process::id()))
}
