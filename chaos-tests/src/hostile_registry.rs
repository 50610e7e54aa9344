//! A registry that lies, for the attacks a real registry cannot be made to mount: a manifest of
//! gigabytes, a layer that declares a petabyte, a blob whose bytes do not match its digest
//! (with or without a `Docker-Content-Digest` header). A small HTTP/1.1 server on loopback, one
//! thread per connection, serving exactly the routes a test gives it and counting requests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What a route answers.
#[derive(Clone)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of filler, written as they are asked for; with a `Content-Length` header or
    /// chunked (so the client cannot tell the size in advance).
    Filler {
        len: u64,
        content_length: bool,
    },
}

#[derive(Clone)]
struct Route {
    content_type: String,
    body: Body,
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
}

pub struct HostileRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<Mutex<State>>,
}

impl HostileRegistry {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        HostileRegistry { addr, state }
    }

    /// Answers GETs of `path` (e.g. `/v2/evil/manifests/v1`) with `body`.
    pub fn route(&self, path: &str, content_type: &str, body: Body, headers: &[(&str, &str)]) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let route = Route { content_type: content_type.into(), body, headers };
        self.state.lock().unwrap_or_else(|e| e.into_inner()).routes.insert(path.into(), route);
    }

    /// Serves `manifest` as `repo:tag` and each blob under its digest.
    pub fn image(&self, repo: &str, tag: &str, manifest: &[u8], blobs: &[(String, Vec<u8>)]) {
        let manifest_type = "application/vnd.oci.image.manifest.v1+json";
        self.route(&format!("/v2/{repo}/manifests/{tag}"), manifest_type, Body::Bytes(manifest.into()), &[]);
        for (digest, bytes) in blobs {
            self.blob(repo, digest, Body::Bytes(bytes.clone()), &[]);
        }
    }

    pub fn blob(&self, repo: &str, digest: &str, body: Body, headers: &[(&str, &str)]) {
        self.route(&format!("/v2/{repo}/blobs/{digest}"), "application/octet-stream", body, headers);
    }

    /// How many requests `path` got.
    pub fn hits(&self, path: &str) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).hits.get(path).copied().unwrap_or(0)
    }

    /// Requests for any blob of `repo`.
    pub fn blob_hits(&self, repo: &str) -> usize {
        let prefix = format!("/v2/{repo}/blobs/");
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.hits.iter().filter(|(p, _)| p.starts_with(&prefix)).map(|(_, n)| n).sum()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("").to_string();
        let route = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            *s.hits.entry(path.clone()).or_default() += 1;
            s.routes.get(&path).cloned()
        };
        let ok = match (path.as_str(), route) {
            ("/v2/" | "/v2", _) => respond(&mut out, "200 OK", "application/json", &[], b"{}", method),
            (_, Some(route)) => answer(&mut out, &route, method),
            (_, None) => {
                respond(&mut out, "404 Not Found", "application/json", &[], b"{\"errors\":[]}", method)
            }
        };
        if !ok {
            return;
        }
    }
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    content_type: &str,
    headers: &[(String, String)],
    body: &[u8],
    method: &str,
) -> bool {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body = if method == "HEAD" { &[][..] } else { body };
    out.write_all(head.as_bytes()).and_then(|()| out.write_all(body)).is_ok()
}

/// Writes the route's answer; false when the connection is done for.
fn answer(out: &mut TcpStream, route: &Route, method: &str) -> bool {
    let (len, content_length) = match &route.body {
        Body::Bytes(b) => return respond(out, "200 OK", &route.content_type, &route.headers, b, method),
        Body::Filler { len, content_length } => (*len, *content_length),
    };
    let mut head =
        format!("HTTP/1.1 200 OK\r\nContent-Type: {}\r\nConnection: close\r\n", route.content_type);
    head.push_str(&if content_length {
        format!("Content-Length: {len}\r\n")
    } else {
        "Transfer-Encoding: chunked\r\n".to_string()
    });
    for (k, v) in &route.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() || method == "HEAD" {
        return false;
    }
    // Filler that parses as the start of a JSON document and never ends.
    let chunk = [b' '; 64 << 10];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(chunk.len() as u64) as usize;
        let written = if content_length {
            out.write_all(&chunk[..n])
        } else {
            out.write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|()| out.write_all(&chunk[..n]))
                .and_then(|()| out.write_all(b"\r\n"))
        };
        if written.is_err() {
            return false;
        }
        sent += n as u64;
    }
    if !content_length {
        let _ = out.write_all(b"0\r\n\r\n");
    }
    false
}
