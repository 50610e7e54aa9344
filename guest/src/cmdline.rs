//! The kernel command line: what the daemon tells the guest at boot (`banger.*` parameters).

use std::net::Ipv4Addr;

/// The guest's settings, from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub root: String,
    pub rootfstype: String,
    pub hostname: Option<String>,
    /// eth0's address and prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gw: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            root: "/dev/vda".into(),
            rootfstype: "ext4".into(),
            hostname: None,
            ip: None,
            gw: None,
            dns: None,
        }
    }
}

/// Parses a kernel command line; unknown or malformed parameters are skipped (a bad value
/// must not stop the boot), and reported in the returned list of complaints.
pub fn parse(cmdline: &str) -> (BootConfig, Vec<String>) {
    let mut c = BootConfig::default();
    let mut complaints = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else { continue };
        let ok = match key {
            "banger.root" if value.starts_with('/') => {
                c.root = value.into();
                true
            }
            "banger.rootfstype" if !value.is_empty() => {
                c.rootfstype = value.into();
                true
            }
            "banger.hostname" if valid_hostname(value) => {
                c.hostname = Some(value.into());
                true
            }
            "banger.ip" => parse_cidr(value).map(|v| c.ip = Some(v)).is_some(),
            "banger.gw" => value.parse().map(|v| c.gw = Some(v)).is_ok(),
            "banger.dns" => value.parse().map(|v| c.dns = Some(v)).is_ok(),
            k if k.starts_with("banger.") => false,
            _ => true,
        };
        if !ok {
            complaints.push(format!("ignoring bad kernel parameter {word:?}"));
        }
    }
    (c, complaints)
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((addr.parse().ok()?, len))
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banger_parameters_are_read_and_others_ignored() {
        let (c, bad) = parse(
            "console=ttyS0 banger.root=/dev/vdb banger.rootfstype=xfs banger.hostname=web-1 \
             banger.ip=172.30.0.5/24 banger.gw=172.30.0.1 banger.dns=1.1.1.1 quiet\n",
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(c.root, "/dev/vdb");
        assert_eq!(c.rootfstype, "xfs");
        assert_eq!(c.hostname.as_deref(), Some("web-1"));
        assert_eq!(c.ip, Some((Ipv4Addr::new(172, 30, 0, 5), 24)));
        assert_eq!(c.gw, Some(Ipv4Addr::new(172, 30, 0, 1)));
        assert_eq!(c.dns, Some(Ipv4Addr::new(1, 1, 1, 1)));
    }

    #[test]
    fn defaults_without_parameters() {
        let (c, bad) = parse("console=ttyS0 init=/.banger/agent");
        assert!(bad.is_empty());
        assert_eq!(c, BootConfig::default());
    }

    #[test]
    fn malformed_values_are_skipped_with_a_complaint() {
        let (c, bad) = parse(
            "banger.ip=172.30.0.5 banger.ip=1.2.3.4/33 banger.gw=nope banger.hostname=a/b \
             banger.root=vda banger.whatever=1",
        );
        assert_eq!(c, BootConfig::default());
        assert_eq!(bad.len(), 6, "{bad:?}");
    }
}
