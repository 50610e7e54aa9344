//! A writer of newc cpio archives (the format Linux unpacks an initramfs from). Linux accepts
//! several archives one after the other, so each initrd part is one whole archive.

use std::collections::BTreeSet;
use std::io::Write;

/// A newc archive being written to `out`. Parent directories are written before the first
/// entry beneath them (the kernel's unpacker does not make them).
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio { out, ino: 0, written: 0, dirs: BTreeSet::new() }
    }

    /// A regular file at `path` (absolute or relative to the archive's root) with `mode`'s
    /// permission bits, owned by root.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.entry(path, 0o100_000 | (mode & 0o7777), 1, data)
    }

    /// A directory (and its parents), once.
    pub fn dir(&mut self, path: &str) -> std::io::Result<()> {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040_755, 2, &[])
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name} is over 4 GiB: newc cannot hold it")))?;
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| std::io::Error::other("a cpio entry name over 4 GiB"))?;
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..pad])
    }

    /// Writes the trailer and returns the output and the archive's length.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        self.entry("TRAILER!!!", 0, 1, &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

/// One entry read back from a newc archive.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// The entries of one or more newc archives laid one after the other, trailers left out.
#[cfg(test)]
pub fn read_all(mut bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = vec![];
    let mut offset = 0usize;
    while !bytes.is_empty() {
        // Zero padding may sit between archives.
        if bytes[0] == 0 {
            bytes = &bytes[1..];
            offset += 1;
            continue;
        }
        let header = bytes.get(..110).ok_or(format!("a truncated header at {offset}"))?;
        if &header[..6] != b"070701" {
            return Err(format!("no newc magic at {offset}"));
        }
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or(format!("a bad header field at {offset}"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name_end = 110 + namesize;
        let data_start = name_end.div_ceil(4) * 4;
        let data_end = data_start + size;
        let name = bytes.get(110..name_end - 1).ok_or(format!("a truncated name at {offset}"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data = bytes.get(data_start..data_end).ok_or(format!("truncated data at {offset}"))?;
        if name != "TRAILER!!!" {
            entries.push(Entry { name, mode, data: data.to_vec() });
        }
        let next = data_end.div_ceil(4) * 4;
        offset += next.min(bytes.len());
        bytes = bytes.get(next..).unwrap_or(&[]);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_reads_back_with_its_parent_directories_first() {
        let mut c = Cpio::new(vec![]);
        c.file("/lib/modules/6.1/kernel/a.ko", 0o644, b"abc").unwrap();
        c.file("/lib/modules/6.1/kernel/b.ko", 0o644, b"").unwrap();
        c.file("/init", 0o755, b"\x7fELF12345").unwrap();
        let (bytes, len) = c.finish().unwrap();
        assert_eq!(bytes.len() as u64, len);
        assert_eq!(len % 4, 0);
        let entries = read_all(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.mode)).collect();
        assert_eq!(
            names,
            [
                ("lib", 0o40755),
                ("lib/modules", 0o40755),
                ("lib/modules/6.1", 0o40755),
                ("lib/modules/6.1/kernel", 0o40755),
                ("lib/modules/6.1/kernel/a.ko", 0o100644),
                ("lib/modules/6.1/kernel/b.ko", 0o100644),
                ("init", 0o100755),
            ]
        );
        assert_eq!(entries[4].data, b"abc");
        assert_eq!(entries[6].data, b"\x7fELF12345");
    }

    #[test]
    fn concatenated_archives_read_as_one() {
        let one = Cpio::new(vec![]);
        let (mut a, _) = one.finish().unwrap();
        let mut two = Cpio::new(vec![]);
        two.file("init", 0o755, b"x").unwrap();
        a.extend(two.finish().unwrap().0);
        assert_eq!(
            read_all(&a).unwrap(),
            [Entry { name: "init".into(), mode: 0o100755, data: b"x".to_vec() }]
        );
    }

    #[test]
    fn the_system_cpio_reads_what_is_written() {
        let Some(cpio) = crate::image_cache::flatten::find_program("cpio") else {
            eprintln!("skipped: cpio is not installed");
            return;
        };
        let mut c = Cpio::new(vec![]);
        c.file("/banger/modules", 0o644, b"/lib/x.ko\n").unwrap();
        let (bytes, _) = c.finish().unwrap();
        let mut child = std::process::Command::new(cpio)
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "banger\nbanger/modules\n");
    }
}
