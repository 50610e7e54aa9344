//! A real OCI registry (Debian's `docker-registry`, CNCF distribution) on a free loopback port
//! with its storage in a temp dir, and its request log for counting what clients fetched.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRegistry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

pub fn available() -> bool {
    std::path::Path::new("/usr/bin/docker-registry").is_file()
}

impl TestRegistry {
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// A registry that requires HTTP basic auth (htpasswd, bcrypt) for everything.
    pub fn start_with_password(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let auth = match auth {
            None => String::new(),
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
                format!("auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n", htpasswd.display())
            }
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:0\n{auth}",
                storage.display()
            ),
        )
        .expect("registry config");
        let log = dir.path().join("registry.log");
        let mut child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        // Copy its log to a file, and report the port it chose.
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&log_path).expect("registry log");
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr: String = addr.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                    let _ = tx.send(addr);
                }
                let _ = writeln!(file, "{line}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
                break a;
            }
            assert!(Instant::now() < deadline, "docker-registry did not say where it listens");
        };
        TestRegistry { addr, log, _dir: dir, child }
    }

    /// GET requests for blobs the registry has served so far.
    pub fn blob_gets(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains("http.request.method=GET") && l.contains("/blobs/sha256:")).count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
