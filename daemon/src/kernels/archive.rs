//! The archives a kernel package comes in, read with every size bounded: an `ar` archive (a
//! Debian `.deb`), its compressed `data.tar` member, and a tar's index. Nothing is extracted by
//! the paths an archive names; a path that climbs (`..`) or is absolute is refused anyway.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// How much of a package banger reads: the unpacked data and the entries in it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The unpacked `data.tar` (or tar stream) at most.
    pub unpacked_bytes: u64,
    pub entries: usize,
    /// A path in the archive at most (bytes).
    pub path_bytes: usize,
}

/// A real distribution kernel unpacks to a few hundred MiB and some thousands of files.
pub const LIMITS: Limits = Limits { unpacked_bytes: 2 << 30, entries: 200_000, path_bytes: 4096 };

/// A byte range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

impl Span {
    /// The bytes, read whole; the caller bounds `len`.
    pub fn read(&self, file: &mut File) -> std::io::Result<Vec<u8>> {
        file.seek(SeekFrom::Start(self.offset))?;
        let mut out = Vec::with_capacity(self.len.min(64 << 20) as usize);
        file.take(self.len).read_to_end(&mut out)?;
        if (out.len() as u64) < self.len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the archive ends early"));
        }
        Ok(out)
    }
}

/// The `data.tar*` member of an `ar` archive (a `.deb`): its span in `file` (`len` bytes).
pub fn deb_data(file: &mut File, len: u64) -> Result<Span, String> {
    let mut magic = [0u8; 8];
    file.seek(SeekFrom::Start(0)).and_then(|_| file.read_exact(&mut magic)).map_err(|e| e.to_string())?;
    if &magic != b"!<arch>\n" {
        return Err("it is not an ar archive".into());
    }
    let mut at = 8u64;
    // A .deb holds three members; a few more are tolerated.
    for _ in 0..16 {
        if at + 60 > len {
            break;
        }
        let mut header = [0u8; 60];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|e| format!("cannot read a member header: {e}"))?;
        if &header[58..60] != b"`\n" {
            return Err(format!("a damaged ar member header at byte {at}"));
        }
        let name = String::from_utf8_lossy(&header[..16]).trim_end().trim_end_matches('/').to_string();
        let size = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("member {name:?} has no readable size"))?;
        let offset = at + 60;
        if size > len - offset {
            return Err(format!(
                "member {name:?} claims {size} bytes but the file holds only {} after it (truncated?)",
                len - offset
            ));
        }
        if name.starts_with("data.tar") {
            return Ok(Span { offset, len: size });
        }
        at = offset + size + (size & 1);
    }
    Err("it is an ar archive without a data.tar member: not a Debian package".into())
}

/// A writer that takes at most `left` bytes and then fails, saying so.
struct Capped<W> {
    inner: W,
    left: u64,
    over: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return Err(std::io::Error::other("over the size limit"));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The compressions banger unpacks, by magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    /// LZ4's legacy format, as a bzImage's payload uses it (Debian's kernels).
    Lz4Legacy,
}

/// The xz decoder's memory limit (Debian's packages need 8 MiB dictionaries at most).
const XZ_MEMORY: u64 = 256 << 20;

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// A legacy LZ4 block unpacks to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&LZ4_LEGACY_MAGIC) {
            Compression::Lz4Legacy
        } else {
            Compression::None
        }
    }
}

/// Why an unpacking failed.
#[derive(Debug)]
pub enum Unpack {
    /// More than the limit came out.
    TooLarge,
    /// The data does not decompress (or could not be written).
    Bad(String),
}

/// Unpacks `input` (compressed as its magic says, or not) into `out`, at most `cap` bytes.
pub fn unpack(input: &mut dyn Read, out: &mut dyn Write, cap: u64) -> Result<u64, Unpack> {
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Unpack::Bad(e.to_string())),
        }
    }
    let mut input = std::io::BufReader::new((&head[..got]).chain(input));
    let mut capped = Capped { inner: out, left: cap, over: false };
    let done = match Compression::sniff(&head[..got]) {
        Compression::None => std::io::copy(&mut input, &mut capped).map(|_| ()),
        Compression::Gzip => {
            std::io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut capped).map(|_| ())
        }
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(input)
            .and_then(|mut d| std::io::copy(&mut d, &mut capped))
            .map(|_| ()),
        Compression::Xz => {
            // A stream's header names the dictionary size it needs: capped, so a package
            // cannot make the decoder allocate gigabytes.
            xz2::stream::Stream::new_stream_decoder(XZ_MEMORY, xz2::stream::CONCATENATED)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|stream| {
                    std::io::copy(&mut xz2::bufread::XzDecoder::new_stream(input, stream), &mut capped)
                })
                .map(|_| ())
        }
        Compression::Lz4Legacy => lz4_legacy(&mut input, &mut capped),
    };
    match done {
        _ if capped.over => Err(Unpack::TooLarge),
        Err(e) => Err(Unpack::Bad(e.to_string())),
        Ok(()) => Ok(cap - capped.left),
    }
}

/// LZ4's legacy format: the magic, then blocks each led by its compressed length (the magic
/// again may start a new stream). The kernel's build appends the unpacked size as 4 more bytes,
/// read here as a length with nothing after it.
fn lz4_legacy(input: &mut dyn Read, out: &mut dyn Write) -> std::io::Result<()> {
    let bound = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
    let mut block = vec![];
    let mut unpacked = vec![0u8; LZ4_LEGACY_BLOCK];
    loop {
        let mut word = [0u8; 4];
        match input.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        if word == LZ4_LEGACY_MAGIC {
            continue;
        }
        let len = u32::from_le_bytes(word) as usize;
        block.clear();
        input.take(len.min(bound) as u64).read_to_end(&mut block)?;
        if block.is_empty() {
            return Ok(()); // the appended size
        }
        if len > bound || block.len() < len {
            return Err(std::io::Error::other("a damaged or truncated LZ4 block"));
        }
        let n = lz4_flex::block::decompress_into(&block, &mut unpacked).map_err(std::io::Error::other)?;
        out.write_all(&unpacked[..n])?;
    }
}

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// Links, devices, fifos: nothing a kernel package needs.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative, without a leading `./`.
    pub path: String,
    pub kind: Kind,
    pub data: Span,
}

/// The entries of the tar in `file` (`len` bytes long), with every claim checked against the
/// file: no entry reaches past its end, no path climbs out or is absolute.
pub fn index_tar(file: &mut File, len: u64, limits: &Limits) -> Result<Vec<TarEntry>, String> {
    let mut entries = vec![];
    let mut at = 0u64;
    let (mut long_name, mut pax_path, mut pax_size): (Option<String>, Option<String>, Option<u64>) =
        (None, None, None);
    loop {
        if at + 512 > len {
            // Some writers stop without the two zero blocks.
            if at == len {
                break;
            }
            return Err("the tar ends in the middle of a header (truncated?)".into());
        }
        let mut h = [0u8; 512];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut h))
            .map_err(|e| format!("cannot read the tar: {e}"))?;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let stored =
            octal(&h[148..156]).ok_or_else(|| format!("a header without a checksum at byte {at}"))?;
        let sum: u64 =
            h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 }).sum();
        if stored != sum {
            return Err(format!(
                "a damaged tar header at byte {at} (checksum mismatch): not a tar, or corrupt"
            ));
        }
        let size = pax_size.take().map_or_else(|| number(&h[124..136]), Some);
        let size = size.ok_or_else(|| format!("a tar header with an unreadable size at byte {at}"))?;
        let data = at + 512;
        if size > len - data {
            return Err(format!(
                "a tar entry claims {size} bytes but only {} follow it (truncated, or a lie)",
                len - data
            ));
        }
        let next = data + size.div_ceil(512) * 512;
        let typeflag = h[156];
        let span = Span { offset: data, len: size };
        match typeflag {
            b'L' | b'x' => {
                if size > limits.path_bytes as u64 + 65536 {
                    return Err(format!("a tar name record of {size} bytes: over the limit"));
                }
                let body = span.read(file).map_err(|e| format!("cannot read the tar: {e}"))?;
                if typeflag == b'L' {
                    long_name = Some(String::from_utf8_lossy(&body).trim_end_matches('\0').to_string());
                } else {
                    let (p, s) = pax(&body)?;
                    pax_path = p.or(pax_path);
                    pax_size = s;
                }
            }
            b'g' | b'K' => {}
            _ => {
                let name = match pax_path.take().or(long_name.take()) {
                    Some(name) => name,
                    None => ustar_name(&h),
                };
                if name.len() > limits.path_bytes {
                    return Err(format!("a tar path of {} bytes: over the limit", name.len()));
                }
                if let Some(path) = clean(&name)? {
                    let kind = match typeflag {
                        b'0' | 0 | b'7' => Kind::File,
                        b'5' => Kind::Dir,
                        _ => Kind::Other,
                    };
                    if entries.len() >= limits.entries {
                        return Err(format!(
                            "the package holds over {} entries: over the limit",
                            limits.entries
                        ));
                    }
                    entries.push(TarEntry { path, kind, data: span });
                }
            }
        }
        at = next;
    }
    Ok(entries)
}

/// `name` relative and without `./`; `None` for the root itself. A path that climbs or is
/// absolute is an error: a package has no business naming one.
fn clean(name: &str) -> Result<Option<String>, String> {
    if name.starts_with('/') {
        return Err(format!("the package names an absolute path {name:?}: refused"));
    }
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err(format!("the package names a path that climbs out ({name:?}): refused"));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn ustar_name(h: &[u8; 512]) -> String {
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = field(&h[..100]);
    if &h[257..262] == b"ustar" {
        let prefix = field(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn octal(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A size field: octal, or base-256 when its top bit is set (GNU, for sizes ≥ 8 GiB).
fn number(b: &[u8]) -> Option<u64> {
    if b[0] & 0x80 != 0 {
        if b[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (b[0] & 0x3f) as u64;
        for &c in &b[1..] {
            v = v.checked_mul(256)?.checked_add(c as u64)?;
        }
        return Some(v);
    }
    octal(b)
}

/// The `path` and `size` of a pax extended header.
fn pax(body: &[u8]) -> Result<(Option<String>, Option<u64>), String> {
    let (mut path, mut size) = (None, None);
    let mut rest = body;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&c| c == b' ').ok_or("a damaged pax header")?;
        let n: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > space + 1 && n <= rest.len())
            .ok_or("a damaged pax header")?;
        let record = &rest[space + 1..n - 1];
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = record.strip_prefix(b"size=") {
            size = Some(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or("a bad pax size")?);
        }
        rest = &rest[n..];
    }
    Ok((path, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (File, u64) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(vec![]);
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
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

    #[test]
    fn ar_members_are_found_and_their_sizes_checked() {
        let deb = ar_of(&[("debian-binary", b"2.0\n"), ("control.tar.xz", b"xyz"), ("data.tar.xz", b"DATA")]);
        let (mut f, len) = file_with(&deb);
        let span = deb_data(&mut f, len).unwrap();
        assert_eq!(span.read(&mut f).unwrap(), b"DATA");
        let (mut f, len) = file_with(&deb[..deb.len() - 2]);
        assert!(deb_data(&mut f, len).unwrap_err().contains("truncated"));
        let (mut f, len) = file_with(&ar_of(&[("debian-binary", b"2.0\n")]));
        assert!(deb_data(&mut f, len).unwrap_err().contains("without a data.tar"));
        let (mut f, len) = file_with(b"garbage garbage garbage");
        assert!(deb_data(&mut f, len).unwrap_err().contains("not an ar archive"));
    }

    #[test]
    fn a_tar_is_indexed_with_long_names() {
        let long = format!("./lib/modules/6.1/{}/x.ko", "d".repeat(150));
        let tar = tar_of(&[("./boot/vmlinuz-6.1", b"kernel"), (&long, b"module")]);
        let (mut f, len) = file_with(&tar);
        let entries = index_tar(&mut f, len, &LIMITS).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path, "boot/vmlinuz-6.1");
        assert_eq!(entries[1].path, long.trim_start_matches("./"));
        assert_eq!(entries[1].data.read(&mut f).unwrap(), b"module");
    }

    #[test]
    fn climbing_or_absolute_paths_are_refused() {
        assert!(clean("../etc/passwd").unwrap_err().contains("climbs"));
        assert!(clean("./lib/../../x").unwrap_err().contains("climbs"));
        assert!(clean("/etc/passwd").unwrap_err().contains("absolute"));
        assert_eq!(clean("./").unwrap(), None);
        // The tar crate refuses to write such names, so the header is written by hand.
        let mut tar = tar_of(&[("a", b"x")]);
        tar[..4].copy_from_slice(b"../a");
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&tar[..512]);
        h.set_cksum();
        tar[..512].copy_from_slice(h.as_bytes());
        let (mut f, len) = file_with(&tar);
        assert!(index_tar(&mut f, len, &LIMITS).unwrap_err().contains("climbs"));
    }

    #[test]
    fn an_entry_claiming_more_than_the_file_holds_is_refused() {
        let mut tar = tar_of(&[("big", b"x")]);
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes().copy_from_slice(&tar[..512]);
        h.set_size(10 << 30);
        h.set_cksum();
        tar[..512].copy_from_slice(h.as_bytes());
        let (mut f, len) = file_with(&tar);
        assert!(index_tar(&mut f, len, &LIMITS).unwrap_err().contains("claims 10737418240 bytes"));
        let (mut f, len) = file_with(&[0x55; 1024]);
        assert!(index_tar(&mut f, len, &LIMITS).unwrap_err().contains("checksum"));
    }

    #[test]
    fn too_many_entries_are_refused() {
        let tar = tar_of(&[("a", b""), ("b", b""), ("c", b"")]);
        let (mut f, len) = file_with(&tar);
        let limits = Limits { entries: 2, ..LIMITS };
        assert!(index_tar(&mut f, len, &limits).unwrap_err().contains("over 2 entries"));
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut w = xz2::write::XzEncoder::new(vec![], 1);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn unpacking_stops_at_the_cap() {
        let zeros = vec![0u8; 1 << 20];
        let z = zstd::encode_all(&zeros[..], 3).unwrap();
        let mut out = vec![];
        assert!(matches!(unpack(&mut &z[..], &mut out, 1000), Err(Unpack::TooLarge)));
        let xz = xz(&zeros);
        assert!(matches!(unpack(&mut &xz[..], &mut vec![], 1000), Err(Unpack::TooLarge)));
        let mut out = vec![];
        assert_eq!(unpack(&mut &xz[..], &mut out, 2 << 20).unwrap(), 1 << 20);
        assert_eq!(out, zeros);
        assert!(matches!(unpack(&mut &b"\x28\xb5\x2f\xfdjunk"[..], &mut vec![], 1000), Err(Unpack::Bad(_))));
    }

    #[test]
    fn lz4_legacy_unpacks_as_the_kernel_lays_it_out() {
        let data: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let mut packed = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            packed.extend((block.len() as u32).to_le_bytes());
            packed.extend(block);
        }
        packed.extend((data.len() as u32).to_le_bytes());
        let mut out = vec![];
        assert_eq!(unpack(&mut &packed[..], &mut out, 10 << 20).unwrap(), data.len() as u64);
        assert_eq!(out, data);
        assert!(matches!(unpack(&mut &packed[..], &mut vec![], 1 << 20), Err(Unpack::TooLarge)));
        assert!(matches!(
            unpack(&mut &packed[..packed.len() / 2], &mut vec![], 10 << 20),
            Err(Unpack::Bad(_))
        ));
    }
}
