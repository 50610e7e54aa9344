//! Pulls from a real registry through the real daemon and CLI, compared against umoci.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::registry::{self, TestRegistry};
use chaos_tests::{TestDaemon, capable, stderr, stdout};

fn registry_or_skip() -> Option<TestRegistry> {
    capable("registry", registry::available(), "docker-registry is not installed (scripts/dev setup installs it)")
        .then(TestRegistry::start)
}

#[tokio::test]
async fn a_simple_image_pulls_and_lists() {
    let Some(reg) = registry_or_skip() else { return };
    let layer = LayerTar::default().dir("etc").file("etc/hello", b"hello from a layer\n").bytes();
    let image = oci::image(&[layer], Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "test/simple", Some("v1"), &image).await;
    let d = TestDaemon::start().await;
    let reference = format!("{}/test/simple:v1", reg.addr);
    let out = d.cli(&["image", "pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("pulled simple-v1 ("), "{}", stdout(&out));
    let list = stdout(&d.cli(&["image", "ls"]));
    assert!(list.contains("simple-v1"), "{list}");
}
