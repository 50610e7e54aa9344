//! Registry credentials, resolved the way docker does from the user's `config.json`:
//! a `credHelpers` entry for the registry, else the `credsStore`, else `auths`. Helpers speak
//! the docker-credential protocol (`docker-credential-NAME get`, registry on stdin, JSON out).
//! The CLI resolves them so the daemon never reads a user's files.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use protocol::image::Credentials;
use protocol::{Error, ErrorKind};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// The registry host a reference names (`docker.io` when it names none).
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

fn config_path() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json"))
}

/// Keys docker uses for a registry in `auths` (Docker Hub has a historic URL form).
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")];
    if registry == "docker.io" {
        keys.extend(["https://index.docker.io/v1/".into(), "index.docker.io".into()]);
    }
    keys
}

pub fn credentials_for(registry: &str) -> Result<Option<Credentials>, Error> {
    let Some(path) = config_path() else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::new(ErrorKind::InvalidInput, format!("cannot read {}: {e}", path.display())));
        }
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| {
        Error::new(ErrorKind::InvalidInput, format!("{} is not valid JSON: {e}", path.display()))
            .with_hint("fix or remove it; banger reads it for registry credentials")
    })?;
    let keys = keys_for(registry);
    if let Some(helper) = keys.iter().find_map(|k| config.cred_helpers.get(k)) {
        return run_helper(helper, registry);
    }
    if let Some(store) = &config.creds_store
        && let Some(found) = run_helper(store, registry)?
    {
        return Ok(Some(found));
    }
    let Some(entry) = keys.iter().find_map(|k| config.auths.get(k)) else { return Ok(None) };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials { username: u.clone(), password: p.clone() }));
    }
    let Some(encoded) = &entry.auth else { return Ok(None) };
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("the auth entry for {registry} in {} is malformed", path.display()),
        )
        .with_hint("log in again with `docker login`")
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials { username: username.into(), password: password.into() }))
}

fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>, Error> {
    let program = format!("docker-credential-{name}");
    let failed = |why: String| {
        Error::new(ErrorKind::Unavailable, format!("credential helper {program} failed: {why}")).with_hint(
            format!("check that {program} is installed and works: `echo {registry} | {program} get`"),
        )
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(registry.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        // The protocol's way to say "nothing stored for this registry".
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(said.trim().to_string()));
    }
    let reply: HelperReply =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("unreadable reply: {e}")))?;
    Ok(Some(Credentials { username: reply.username, password: reply.secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_found_in_references() {
        assert_eq!(registry_of("alpine"), "docker.io");
        assert_eq!(registry_of("library/alpine:3"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("ghcr.io/org/app@sha256:00"), "ghcr.io");
    }
}
