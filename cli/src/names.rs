//! Names for VMs that `vm run` creates without `--name`: `brave-otter`, as docker does, or
//! `vm-` and six hex digits when a pair is taken.

use std::hash::{BuildHasher, Hasher};

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "crisp", "daring", "eager", "fancy", "gentle", "happy", "jolly",
    "keen", "lively", "lucky", "mellow", "nimble", "proud", "quick", "quiet", "rapid", "shiny", "snappy",
    "steady", "sunny", "swift", "tidy", "vivid", "witty", "zesty", "bold",
];

const NOUNS: &[&str] = &[
    "otter", "falcon", "badger", "heron", "lynx", "panda", "walrus", "finch", "marten", "gecko", "ibex",
    "koala", "lemur", "mole", "newt", "orca", "puffin", "quail", "raven", "seal", "tapir", "urchin", "viper",
    "wombat", "yak", "zebra", "bison", "crane", "dingo", "eel",
];

/// 64 bits from the standard library's per-process random keys and the clock: enough to make
/// a collision between two `vm run`s unlikely, with no dependency.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// `adjective-noun`; with `attempt` > 0 (the pair was taken), `vm-` and six hex digits.
pub fn generate(attempt: u32) -> String {
    let r = random();
    if attempt == 0 {
        let a = ADJECTIVES[(r % ADJECTIVES.len() as u64) as usize];
        let n = NOUNS[((r >> 32) % NOUNS.len() as u64) as usize];
        format!("{a}-{n}")
    } else {
        format!("vm-{:06x}", r & 0xff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_args::valid_vm_name;

    #[test]
    fn generated_names_are_valid_vm_names() {
        for attempt in 0..3 {
            for _ in 0..200 {
                let name = generate(attempt);
                assert!(valid_vm_name(&name), "{name}");
            }
        }
        for w in ADJECTIVES.iter().chain(NOUNS) {
            assert!(valid_vm_name(w) && !w.contains('-'), "{w}");
        }
    }

    #[test]
    fn generated_names_vary() {
        let names: std::collections::BTreeSet<String> = (0..50).map(|_| generate(1)).collect();
        assert!(names.len() > 40, "{names:?}");
    }
}
