//! Datagram framing for AF_UNIX SOCK_SEQPACKET.
//!
//! A datagram is one flags byte followed by a non-empty body. A message that fits goes in one
//! datagram; a larger one is split into chunks, each but the last flagged [`CONTINUED`], and the
//! receiver reassembles them up to [`MAX_MESSAGE`]. A reply that is a stream (progress, output)
//! is a sequence of messages, each but the last flagged [`MORE`] on its final chunk.
//!
//! Nothing here touches a socket, so every rule is unit- and property-tested.

/// The largest datagram either side sends or accepts, flags byte included.
pub const MAX_DATAGRAM: usize = 64 * 1024;
/// The largest body one datagram carries.
pub const MAX_BODY: usize = MAX_DATAGRAM - 1;
/// The largest reassembled message. Also the bincode decode limit.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// This datagram's message continues in the next datagram.
pub const CONTINUED: u8 = 0b01;
/// More messages follow this one in the same reply stream.
pub const MORE: u8 = 0b10;
const KNOWN_FLAGS: u8 = CONTINUED | MORE;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty datagram (an empty datagram reads as end-of-stream and is never sent)")]
    Empty,
    #[error("datagram has no body after its flags byte")]
    NoBody,
    #[error("datagram is larger than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("datagram sets unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("a chunk flagged CONTINUED also set MORE; MORE belongs on a message's last chunk")]
    MoreOnContinuedChunk,
    #[error("message exceeds the {MAX_MESSAGE}-byte reassembly limit")]
    MessageTooLarge,
    #[error("cannot send an empty message")]
    EmptyMessage,
}

/// Splits an encoded message into datagram (flags, body) pairs, in order.
pub fn split(message: &[u8], more: bool) -> Result<Vec<(u8, &[u8])>, FrameError> {
    if message.is_empty() {
        return Err(FrameError::EmptyMessage);
    }
    if message.len() > MAX_MESSAGE {
        return Err(FrameError::MessageTooLarge);
    }
    let chunks: Vec<&[u8]> = message.chunks(MAX_BODY).collect();
    let last = chunks.len() - 1;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let flags = if i < last {
                CONTINUED
            } else if more {
                MORE
            } else {
                0
            };
            (flags, body)
        })
        .collect())
}

/// One complete message taken off the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
    /// More messages follow in this reply stream.
    pub more: bool,
}

/// Collects chunks into messages, enforcing [`MAX_MESSAGE`] as bytes arrive (never after).
#[derive(Debug)]
pub struct Reassembler {
    buf: Vec<u8>,
    cap: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::with_cap(MAX_MESSAGE)
    }
}

impl Reassembler {
    pub fn with_cap(cap: usize) -> Self {
        Reassembler { buf: Vec::new(), cap }
    }

    /// True while a message has started but its last chunk has not arrived.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Takes one datagram; returns the message it completes, if any. After an error the
    /// connection is unusable (framing is lost), so the caller closes it.
    pub fn push(&mut self, datagram: &[u8]) -> Result<Option<Message>, FrameError> {
        let (&flags, body) = datagram.split_first().ok_or(FrameError::Empty)?;
        if datagram.len() > MAX_DATAGRAM {
            return Err(FrameError::Oversized);
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags(flags & !KNOWN_FLAGS));
        }
        if body.is_empty() {
            return Err(FrameError::NoBody);
        }
        if flags & CONTINUED != 0 && flags & MORE != 0 {
            return Err(FrameError::MoreOnContinuedChunk);
        }
        if self.buf.len() + body.len() > self.cap {
            self.buf = Vec::new();
            return Err(FrameError::MessageTooLarge);
        }
        self.buf.extend_from_slice(body);
        if flags & CONTINUED != 0 {
            return Ok(None);
        }
        Ok(Some(Message { bytes: std::mem::take(&mut self.buf), more: flags & MORE != 0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagrams(message: &[u8], more: bool) -> Vec<Vec<u8>> {
        split(message, more).unwrap().into_iter().map(|(f, b)| [&[f][..], b].concat()).collect()
    }

    #[test]
    fn small_message_is_one_datagram() {
        let d = datagrams(b"abc", false);
        assert_eq!(d, vec![vec![0, b'a', b'b', b'c']]);
    }

    #[test]
    fn large_message_is_chunked_and_reassembled() {
        let msg: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let d = datagrams(&msg, true);
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|x| x.len() <= MAX_DATAGRAM));
        let mut r = Reassembler::default();
        for x in &d[..3] {
            assert_eq!(r.push(x).unwrap(), None);
            assert!(r.in_progress());
        }
        assert_eq!(r.push(&d[3]).unwrap(), Some(Message { bytes: msg, more: true }));
        assert!(!r.in_progress());
    }

    #[test]
    fn cap_is_enforced_while_chunks_arrive() {
        let mut r = Reassembler::with_cap(100_000);
        let chunk = [&[CONTINUED][..], &[7u8; MAX_BODY][..]].concat();
        assert_eq!(r.push(&chunk).unwrap(), None);
        assert_eq!(r.push(&chunk), Err(FrameError::MessageTooLarge));
    }

    #[test]
    fn bad_datagrams_are_refused() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(&[]), Err(FrameError::Empty));
        assert_eq!(r.push(&[0]), Err(FrameError::NoBody));
        assert_eq!(r.push(&[0x80, 1]), Err(FrameError::UnknownFlags(0x80)));
        assert_eq!(r.push(&[CONTINUED | MORE, 1]), Err(FrameError::MoreOnContinuedChunk));
        assert_eq!(r.push(&vec![0; MAX_DATAGRAM + 1]), Err(FrameError::Oversized));
        assert_eq!(split(&[], false), Err(FrameError::EmptyMessage));
    }
}
