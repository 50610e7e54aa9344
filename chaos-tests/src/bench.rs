//! What the guest benchmarks share: how they start (only under `cargo bench`, with a daemon
//! ready to boot real guests) and their arithmetic.

use std::time::Duration;

use crate::guests::GuestHost;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0 to 1) of `v`, which it sorts.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// A runtime and a guest host, when run by `cargo bench` on a host that can boot guests;
/// otherwise `None`, after saying why. `what` names the benches.
pub fn guest_host(what: &str) -> Option<(tokio::runtime::Runtime, GuestHost)> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("{what} benches: run with `cargo bench -p chaos-tests` to measure");
        return None;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().ok()?;
    let Some(g) = rt.block_on(GuestHost::start()) else {
        eprintln!("{what} benches skipped (see above)");
        return None;
    };
    Some((rt, g))
}
