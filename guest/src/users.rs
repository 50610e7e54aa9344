//! Who an exec runs as, resolved from the guest's own `/etc/passwd` and `/etc/group` (a static
//! glibc binary cannot load NSS modules, and the image's files are the truth anyway).

use std::path::Path;

/// A resolved identity: what the child sets before it execs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// The login shell (`/bin/sh` when the entry leaves it empty).
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            let _gecos = f.next()?;
            let home = f.next()?;
            let shell = f.next().filter(|s| !s.is_empty()).unwrap_or("/bin/sh");
            (!name.is_empty() && !name.starts_with('#')).then(|| Passwd {
                name: name.into(),
                uid,
                gid,
                home: home.into(),
                shell: shell.into(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let gid = f.next()?.parse().ok()?;
            let members = f.next().unwrap_or("").split(',').filter(|m| !m.is_empty()).map(String::from);
            (!name.is_empty() && !name.starts_with('#')).then(|| Group {
                name: name.into(),
                gid,
                members: members.collect(),
            })
        })
        .collect()
}

/// Resolves `spec` (`user`, `uid`, `user:group`, `uid:gid`; root when `None`) against the files
/// under `root` (`/` in the guest). The error says why, for the exec's 126.
pub fn resolve(root: &Path, spec: Option<&str>) -> Result<Identity, String> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve_in(&parse_passwd(&passwd), &parse_group(&group), spec.unwrap_or("0"))
}

/// The first `/etc/passwd` entry under `root` that `matches`.
pub fn find(root: &Path, matches: impl Fn(&Passwd) -> bool) -> Option<Passwd> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    parse_passwd(&passwd).into_iter().find(|p| matches(p))
}

fn resolve_in(passwd: &[Passwd], groups: &[Group], spec: &str) -> Result<Identity, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match passwd.iter().find(|p| p.name == user) {
        Some(p) => Some(p),
        None => match user.parse::<u32>() {
            Ok(uid) => passwd.iter().find(|p| p.uid == uid),
            Err(_) => return Err(format!("unable to find user {user}: no matching entries in /etc/passwd")),
        },
    };
    let uid = entry.map_or_else(|| user.parse().unwrap_or(0), |p| p.uid);
    let mut gid = entry.map_or(0, |p| p.gid);
    if let Some(g) = group {
        gid = match groups.iter().find(|e| e.name == g) {
            Some(e) => e.gid,
            None => g
                .parse()
                .map_err(|_| format!("unable to find group {g}: no matching entries in /etc/group"))?,
        };
    }
    let mut supplementary = vec![gid];
    if let Some(p) = entry {
        for g in groups.iter().filter(|g| g.members.contains(&p.name)) {
            if !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Identity { uid, gid, groups: supplementary, home: entry.map(|p| p.home.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App,,,:/home/app:/bin/sh\n\
        svc:x:1001:50::/srv:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1000:\nwheel:x:10:app,svc\nbad\n";

    fn r(spec: &str) -> Result<Identity, String> {
        resolve_in(&parse_passwd(PASSWD), &parse_group(GROUP), spec)
    }

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(
            r("app").unwrap(),
            Identity { uid: 1000, gid: 1000, groups: vec![1000, 50, 10], home: Some("/home/app".into()) }
        );
        assert_eq!(r("1001").unwrap().gid, 50);
        assert_eq!(r("0").unwrap(), Identity { uid: 0, gid: 0, groups: vec![0], home: Some("/root".into()) });
        // A uid with no entry runs with gid 0 and no home, as in Docker.
        assert_eq!(r("4242").unwrap(), Identity { uid: 4242, gid: 0, groups: vec![0], home: None });
    }

    #[test]
    fn groups_by_name_or_number() {
        let id = r("svc:staff").unwrap();
        assert_eq!((id.uid, id.gid), (1001, 50));
        assert_eq!(id.groups, vec![50, 10]);
        assert_eq!(r("app:7").unwrap().gid, 7);
    }

    #[test]
    fn unknown_names_fail_with_the_reason() {
        assert!(r("nobody").unwrap_err().contains("unable to find user nobody"));
        assert!(r("app:nogroup").unwrap_err().contains("unable to find group nogroup"));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_passwd(PASSWD).len(), 3);
        let shells: Vec<String> = parse_passwd(PASSWD).into_iter().map(|p| p.shell).collect();
        assert_eq!(shells, ["/bin/sh", "/bin/sh", "/usr/sbin/nologin"]);
        let empty = parse_passwd("x:x:1:1::/h:\n").into_iter().map(|p| p.shell).collect::<Vec<_>>();
        assert_eq!(empty, ["/bin/sh"], "an empty shell is sh");
        assert_eq!(parse_group(GROUP).len(), 4);
    }
}
