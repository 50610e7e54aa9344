//! `kernel import` of real distro kernels: Debian's cloud kernel package (fetched by
//! `scripts/dev kernel`), the same kernel as a bzImage with its modules directory, and hostile
//! packages. The modules banger picks are checked against `depmod`'s own modules.dep, the
//! initrd and the agent in a VM's disk against what `vm create` promises.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chaos_tests::{TestDaemon, capable, stderr, stdout};

const NEEDED: [&str; 5] =
    ["virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "vmw_vsock_virtio_transport"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Debian's cloud kernel .deb, fetched (once, checked against its pinned sha256) by
/// `scripts/dev kernel`; `None` (a skip, said why) where it cannot be had.
fn debian_kernel() -> Option<PathBuf> {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let got = DEB.get_or_init(|| {
        let out = Command::new(root().join("scripts/dev")).arg("kernel").current_dir(root()).output();
        match out {
            Ok(o) if o.status.success() => Ok(root().join(String::from_utf8_lossy(&o.stdout).trim())),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        }
    });
    match got {
        Ok(deb) => Some(deb.clone()),
        Err(why) => {
            capable("debian-kernel", false, &format!("scripts/dev kernel cannot fetch it: {why}"));
            None
        }
    }
}

/// A cpio entry: name, mode, data.
type Entry = (String, u32, Vec<u8>);

/// The entries of concatenated newc archives, trailers left out.
fn cpio_entries(mut b: &[u8]) -> Vec<Entry> {
    let mut out = vec![];
    while !b.is_empty() {
        if b[0] == 0 {
            b = &b[1..];
            continue;
        }
        assert_eq!(&b[..6], b"070701", "newc magic");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
        };
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
        let start = (110 + namesize).div_ceil(4) * 4;
        if name != "TRAILER!!!" {
            out.push((name, mode, b[start..start + size].to_vec()));
        }
        b = b.get((start + size).div_ceil(4) * 4..).unwrap_or(&[]);
    }
    out
}

/// The load order a kernel's modules.cpio gives (`/banger/modules`), as module names.
fn load_order(cpio: &[u8]) -> (Vec<String>, Vec<Entry>) {
    let entries = cpio_entries(cpio);
    let list = entries.iter().find(|e| e.0 == "banger/modules").expect("/banger/modules");
    let text = String::from_utf8(list.2.clone()).unwrap();
    for path in text.lines() {
        let file = entries.iter().find(|e| format!("/{}", e.0) == path);
        assert!(
            file.is_some_and(|f| f.1 == 0o100644 && f.2.starts_with(b"\x7fELF")),
            "{path} is in the archive"
        );
    }
    (text.lines().map(module_name).collect(), entries)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap();
    file.split(".ko").next().unwrap().replace('-', "_")
}

/// The package unpacked by dpkg-deb, with modules.dep made by depmod; `None` where the tools
/// are missing.
fn unpacked(deb: &Path) -> Option<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()).status().is_ok_and(|s| s.success());
    if !capable("dpkg", ok, "dpkg-deb cannot unpack the package") {
        return None;
    }
    let release = std::fs::read_dir(dir.path().join("lib/modules")).unwrap().next().unwrap().unwrap();
    let release = release.file_name().into_string().unwrap();
    let depmod = Command::new("depmod").arg("-b").arg(dir.path()).arg(&release).status();
    if !capable(
        "kmod",
        depmod.is_ok_and(|s| s.success()),
        "depmod is missing (scripts/dev setup installs kmod)",
    ) {
        return None;
    }
    Some((dir, release))
}

/// Every needed module and all it depends on per depmod's modules.dep, each after its
/// dependencies.
fn check_against_depmod(order: &[String], modules_dep: &str) {
    let dep: HashMap<String, Vec<String>> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (module_name(m), d.split_whitespace().map(module_name).collect()))
        .collect();
    let mut expected: Vec<String> = vec![];
    for n in NEEDED {
        assert!(dep.contains_key(n), "{n} is a module of this kernel");
        for m in dep[n].iter().chain([&n.to_string()]) {
            if !expected.contains(m) {
                expected.push(m.clone());
            }
        }
    }
    let mut sorted = order.to_vec();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "exactly the needed modules and their dependencies");
    for (i, m) in order.iter().enumerate() {
        for d in &dep[m] {
            assert!(order[..i].contains(d), "{d} loads before {m}: {order:?}");
        }
    }
}

fn ok(d: &TestDaemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn kernels(d: &TestDaemon) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(d, &["kernel", "ls", "--json"])).unwrap()
}

#[tokio::test]
async fn a_debian_package_imports_with_its_modules_in_load_order() {
    let Some(deb) = debian_kernel() else { return };
    let d = TestDaemon::start().await;
    ok(&d, &["kernel", "import", deb.to_str().unwrap(), "--name", "default"]);
    let k = &kernels(&d)[0];
    let release = k["release"].as_str().unwrap().to_string();
    assert!(release.ends_with("-cloud-amd64"), "{k}");
    assert_eq!((k["vmlinux"].as_bool(), k["bzimage"].as_bool()), (Some(true), Some(true)));
    let dir = d.dir.path().join("kernels/default");
    let cpio = std::fs::read(dir.join("modules.cpio")).unwrap();
    let agent = std::fs::metadata(chaos_tests::agent()).unwrap().len();
    let init_cpio = 116 + agent.div_ceil(4) * 4 + 124;
    assert_eq!(k["initrd_bytes"].as_u64(), Some(cpio.len() as u64 + init_cpio), "modules.cpio + /init");
    assert!(std::fs::read(dir.join("vmlinux")).unwrap().starts_with(b"\x7fELF"));
    let (order, entries) = load_order(&cpio);
    println!("modules in load order: {order:?}; modules.cpio {} bytes", cpio.len());
    let moddir = format!("lib/modules/{release}");
    for e in &entries {
        let inside = e.0.starts_with(&moddir) || moddir.starts_with(&e.0) || e.0.starts_with("banger");
        assert!(inside, "{} lies outside /{moddir} and /banger", e.0);
    }
    if let Some((unpacked, rel)) = unpacked(&deb) {
        assert_eq!(rel, release);
        let bz = std::fs::read(unpacked.path().join(format!("boot/vmlinuz-{rel}"))).unwrap();
        assert!(std::fs::read(dir.join("bzImage")).unwrap() == bz, "the bzImage is the package's");
        let modules_dep =
            std::fs::read_to_string(unpacked.path().join(format!("lib/modules/{rel}/modules.dep")));
        check_against_depmod(&order, &modules_dep.unwrap());
    }
    let listed = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(std::fs::File::open(dir.join("modules.cpio")).unwrap())
        .output();
    if capable("cpio", listed.is_ok(), "cpio is missing (scripts/dev setup installs it)") {
        let listed = String::from_utf8(listed.unwrap().stdout).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(listed.lines().collect::<Vec<_>>(), names, "cpio reads the same archive");
    }
}

#[tokio::test]
async fn a_bzimage_with_its_modules_directory_imports_the_same_modules() {
    let Some(deb) = debian_kernel() else { return };
    let Some((unpacked, release)) = unpacked(&deb) else { return };
    let d = TestDaemon::start().await;
    ok(&d, &["kernel", "import", deb.to_str().unwrap(), "--name", "deb"]);
    let bz = unpacked.path().join(format!("boot/vmlinuz-{release}"));
    let modules = unpacked.path().join(format!("lib/modules/{release}"));
    // With depmod's modules.dep (read from it) and without (read from each module's .modinfo).
    ok(
        &d,
        &["kernel", "import", bz.to_str().unwrap(), "--modules", modules.to_str().unwrap(), "--name", "dep"],
    );
    std::fs::remove_file(modules.join("modules.dep")).unwrap();
    ok(
        &d,
        &[
            "kernel",
            "import",
            bz.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
            "--name",
            "modinfo",
        ],
    );
    let cpio = |name: &str| std::fs::read(d.dir.path().join(format!("kernels/{name}/modules.cpio"))).unwrap();
    assert_eq!(cpio("dep"), cpio("deb"));
    assert_eq!(cpio("modinfo"), cpio("deb"));
    // A bzImage alone: kept for QEMU, unpacked for Firecracker, no initrd.
    ok(&d, &["kernel", "import", bz.to_str().unwrap(), "--name", "bare"]);
    let bare = kernels(&d).into_iter().find(|k| k["name"] == "bare").unwrap();
    assert_eq!(bare["release"].as_str(), Some(release.as_str()), "read from the bzImage's header");
    assert!(bare["initrd_bytes"].is_null() && bare["bzimage"] == true, "{bare}");
}

/// An `ar` archive of these members.
fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        out.extend(
            format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, data.len()).bytes(),
        );
        out.extend(*data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// A .deb whose data.tar.gz holds one entry, its header bent by `bend` (checksum made again).
fn deb_with(path: &str, data: &[u8], bend: impl Fn(&mut tar::Header)) -> Vec<u8> {
    use std::io::Write;
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    bend(&mut h);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    ar(&[("debian-binary", b"2.0\n"), ("control.tar.gz", b""), ("data.tar.gz", &gz.finish().unwrap())])
}

#[tokio::test]
async fn hostile_packages_are_refused_and_leave_existing_kernels_alone() {
    let d = TestDaemon::start().await;
    ok(&d, &["kernel", "import", chaos_tests::TEST_KERNEL, "--name", "keep"]);
    let before = kernels(&d);
    let real = debian_kernel().map(|deb| std::fs::read(deb).unwrap());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("climbing", deb_with("./../../etc/evil", b"x", |_| {}), "climbs out"),
        ("absolute", deb_with("/boot/vmlinuz-6.1", b"x", |_| {}), "absolute path"),
        (
            "huge-claim",
            deb_with("./boot/vmlinuz-6.1", b"x", |h| h.set_size(10 << 30)),
            "claims 10737418240 bytes",
        ),
        ("no-kernel", deb_with("./etc/motd", b"hello", |_| {}), "no boot/vmlinuz-RELEASE"),
        ("no-data", ar(&[("debian-binary", b"2.0\n")]), "without a data.tar"),
        ("garbage", chaos_tests::noise(64 << 10, 7), "none of"),
    ];
    if let Some(real) = &real {
        cases.push(("truncated", real[..real.len() / 2].to_vec(), "truncated"));
        // The ar header still claims the whole member: its last bytes are missing.
        cases.push(("short-member", real[..real.len() - 4096].to_vec(), "truncated"));
    }
    for (name, bytes, expected) in cases {
        let path = d.dir.path().join(format!("{name}.deb"));
        std::fs::write(&path, bytes).unwrap();
        let out = d.cli(&["kernel", "import", path.to_str().unwrap(), "--name", name]);
        assert!(!out.status.success(), "{name} imported");
        let err = stderr(&out);
        assert!(err.contains(expected) && err.contains("hint:"), "{name}: {err}");
        assert_eq!(kernels(&d), before, "{name}: the kernels are as they were");
        let scratch: Vec<_> = std::fs::read_dir(d.dir.path().join("kernels"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "keep")
            .map(|e| e.file_name())
            .collect();
        assert!(scratch.is_empty(), "{name}: left {scratch:?}");
    }
}

#[tokio::test]
async fn a_vm_gets_an_initrd_of_the_modules_and_init_and_the_agent_in_its_disk() {
    let Some(deb) = debian_kernel() else { return };
    let d = TestDaemon::start().await;
    ok(&d, &["kernel", "import", deb.to_str().unwrap(), "--name", "default"]);
    ok(&d, &["kernel", "import", chaos_tests::TEST_KERNEL, "--name", "tiny"]);
    let tar = d.dir.path().join("rootfs.tar");
    std::fs::write(
        &tar,
        chaos_tests::oci::LayerTar::default().dir("etc").file("etc/hostname", b"x\n").bytes(),
    )
    .unwrap();
    ok(&d, &["image", "import", tar.to_str().unwrap(), "--name", "base"]);
    ok(&d, &["vm", "create", "distro", "--image", "base", "--no-net"]);
    ok(&d, &["vm", "create", "tiny", "--image", "base", "--no-net", "--kernel", "tiny"]);
    let agent = std::fs::read(chaos_tests::agent()).unwrap();
    let modules = std::fs::read(d.dir.path().join("kernels/default/modules.cpio")).unwrap();
    let initrd = std::fs::read(d.dir.path().join("vms/distro/initrd")).unwrap();
    assert!(initrd.starts_with(&modules), "the initrd starts with the kernel's modules.cpio");
    assert_eq!(
        cpio_entries(&initrd[modules.len()..]),
        [("init".to_string(), 0o100755, agent.clone())],
        "then /init, the agent"
    );
    let k = kernels(&d).into_iter().find(|k| k["name"] == "default").unwrap();
    assert_eq!(k["initrd_bytes"].as_u64(), Some(initrd.len() as u64));
    println!("initrd: {} bytes ({} of modules, agent {} bytes)", initrd.len(), modules.len(), agent.len());
    assert!(
        !d.dir.path().join("vms/tiny/initrd").exists(),
        "a kernel without modules boots init= from the disk"
    );
    for vm in ["distro", "tiny"] {
        let disk = d.dir.path().join(format!("vms/{vm}/disk.ext4"));
        let out = Command::new("debugfs").args(["-R", "stat /.banger/agent"]).arg(&disk).output().unwrap();
        let stat = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(stat.contains("Type: regular Mode: 0755"), "{vm}: {stat}");
        assert!(stat.contains("User: 0 Group: 0"), "{vm}: {stat}");
        let out = Command::new("debugfs").args(["-R", "cat /.banger/agent"]).arg(&disk).output().unwrap();
        assert!(out.stdout == agent, "{vm}: the agent's bytes");
    }
}

#[tokio::test]
async fn a_dynamically_linked_agent_is_refused_at_create_with_how_to_build_it() {
    let opts = chaos_tests::DaemonOpts {
        extra_args: vec!["--agent".into(), "/bin/true".into()],
        ..Default::default()
    };
    let d = TestDaemon::start_with(opts).await;
    ok(&d, &["kernel", "import", chaos_tests::TEST_KERNEL, "--name", "default"]);
    let tar = d.dir.path().join("rootfs.tar");
    std::fs::write(&tar, chaos_tests::oci::LayerTar::default().file("x", b"x").bytes()).unwrap();
    ok(&d, &["image", "import", tar.to_str().unwrap(), "--name", "base"]);
    let out = d.cli(&["vm", "create", "v", "--image", "base", "--no-net"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("dynamically linked") && err.contains("crt-static"),
        "{err}"
    );
    assert!(!d.dir.path().join("vms/v").exists(), "nothing left");
}
