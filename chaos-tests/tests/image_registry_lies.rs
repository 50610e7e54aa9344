//! A registry that lies (`chaos_tests::hostile_registry`), pulled from by the real daemon: a
//! manifest of gigabytes is cut off at the cap without filling the daemon's memory, a layer
//! declaring a petabyte is refused before a byte of it is fetched, and content that does not
//! hash to its digest is refused at once, both digests named, nothing left in the cache.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use chaos_tests::hostile_registry::{Body, HostileRegistry};
use chaos_tests::oci::{self, Compression, Format, LayerTar, sha256};
use chaos_tests::{DaemonOpts, TestDaemon, peak_rss_kib, stderr};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A manifest of one config and these (digest, size) layers.
fn manifest(config: &[u8], layers: &[(String, u64)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, n)| {
            serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len() },
        "layers": layers,
    }))
    .unwrap()
}

fn partials(d: &TestDaemon) -> Vec<String> {
    let dir = d.dir.path().join("cache/oci/blobs/sha256");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

async fn daemon_with(settings: &str) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bangerd.toml");
    std::fs::write(&path, settings).unwrap();
    let opts = DaemonOpts {
        extra_args: vec!["--config".into(), path.to_str().unwrap().into()],
        ..Default::default()
    };
    let d = TestDaemon::start_with(opts).await;
    std::mem::forget(dir); // the daemon read it at start; a leaked temp dir of one file
    d
}

#[tokio::test]
async fn a_manifest_of_gigabytes_is_cut_off_without_filling_memory() {
    let reg = HostileRegistry::start();
    let huge = 3u64 << 30;
    // Chunked, so no Content-Length gives it away: only counting as it arrives stops it.
    reg.route(
        "/v2/evil/manifests/chunked",
        MANIFEST_TYPE,
        Body::Filler { len: huge, content_length: false },
        &[],
    );
    reg.route(
        "/v2/evil/manifests/declared",
        MANIFEST_TYPE,
        Body::Filler { len: huge, content_length: true },
        &[],
    );
    let d = TestDaemon::start().await;
    for tag in ["chunked", "declared"] {
        let out = d.cli(&["image", "pull", &format!("{}/evil:{tag}", reg.addr), "--name", tag]);
        assert!(!out.status.success(), "a 3 GiB manifest is refused");
        assert!(stderr(&out).contains("larger than 4 MiB; that is not a manifest"), "{}", stderr(&out));
    }
    let peak = peak_rss_kib(d.pid());
    assert!(peak < 100 << 10, "bangerd's peak RSS stayed small: {peak} KiB");
    assert!(!d.dir.path().join("images/chunked").exists());
}

#[tokio::test]
async fn a_layer_declaring_a_petabyte_is_refused_before_download() {
    let reg = HostileRegistry::start();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = sha256(b"never sent");
    let petabyte = 1u64 << 50;
    reg.image(
        "evil",
        "v1",
        &manifest(&config, &[(layer.clone(), petabyte)]),
        &[(sha256(&config), config.clone())],
    );
    reg.blob("evil", &layer, Body::Filler { len: petabyte, content_length: true }, &[]);

    // Over the limit (16 GiB by default).
    let d = TestDaemon::start().await;
    let out = d.cli(&["image", "pull", &format!("{}/evil:v1", reg.addr), "--name", "huge"]);
    assert_eq!(out.status.code(), Some(2), "refused as invalid input: {}", stderr(&out));
    assert!(stderr(&out).contains(&format!("layer {layer} declares {petabyte} bytes")), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_layer_bytes"), "the error names the setting: {}", stderr(&out));
    assert_eq!(reg.blob_hits("evil"), 0, "not a byte was asked for");
    assert!(partials(&d).is_empty(), "no partial download: {:?}", partials(&d));

    // Within a raised limit, but more than the disk has free.
    let d = daemon_with("[images]\nmax_layer_bytes = 2251799813685248\n").await;
    let out = d.cli(&["image", "pull", &format!("{}/evil:v1", reg.addr), "--name", "huge"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bytes free"), "{}", stderr(&out));
    assert!(stderr(&out).contains("banger image cache prune"), "the hint says what to do: {}", stderr(&out));
    assert_eq!(reg.blob_hits("evil"), 0, "still not a byte was asked for");
    assert!(partials(&d).is_empty(), "no partial download: {:?}", partials(&d));
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_at_once() {
    let reg = HostileRegistry::start();
    let layer = LayerTar::default().file("hello", b"hello\n").bytes();
    let image = oci::image(&[layer], Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    let (declared, good) = image.blobs[1].clone();
    let mut tampered = good;
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let got = sha256(&tampered);
    reg.image("evil", "v1", &image.manifest, &image.blobs[..1]);
    // The header repeats the manifest's digest, as a registry that lies would.
    reg.blob("evil", &declared, Body::Bytes(tampered), &[("Docker-Content-Digest", declared.as_str())]);

    let d = TestDaemon::start().await;
    let out = d.cli(&["image", "pull", &format!("{}/evil:v1", reg.addr), "--name", "tampered"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("expects {declared}")), "the expected digest is the manifest's: {err}");
    assert!(err.contains(&format!("hashes to {got}")), "the actual digest is what was hashed: {err}");
    assert!(
        !err.contains("retrying") && !err.contains("attempts"),
        "an integrity error is not retried: {err}"
    );
    assert_eq!(reg.hits(&format!("/v2/evil/blobs/{declared}")), 1, "one attempt");
    assert!(partials(&d).is_empty(), "no partial download: {:?}", partials(&d));
    assert!(!d.dir.path().join("images/tampered").exists());
}
