//! The seqpacket framing of [`crate::frame`] over a byte stream (virtio-serial, vsock, a unix
//! stream socket): each datagram is preceded by its length as a little-endian `u32`. The same
//! rules hold (datagram ≤ 64 KiB, message ≤ 16 MiB, enforced as bytes arrive), so a stream
//! peer can claim no more memory than a seqpacket one. Sans-I/O: the agent drives it with
//! blocking reads, the daemon with tokio.

use crate::codec::{self, CodecError};
use crate::frame::{self, FrameError, MAX_DATAGRAM, Message, Reassembler};

const LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// `message` encoded and framed, ready to write in one go.
pub fn encode<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, StreamError> {
    let bytes = codec::encode(message)?;
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for (flags, body) in frame::split(&bytes, false)? {
        let len = u32::try_from(body.len() + 1).map_err(|_| FrameError::Oversized)?;
        out.extend_from_slice(&len.to_le_bytes());
        out.push(flags);
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Cuts a byte stream back into messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    reassembler: Reassembler,
}

impl Decoder {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if the bytes so far hold one. After an error the stream is
    /// unusable (framing is lost): the caller drops the connection.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(head) = self.buf.first_chunk::<LEN>() else { return Ok(None) };
            let len = u32::from_le_bytes(*head) as usize;
            if len == 0 {
                return Err(FrameError::Empty);
            }
            if len > MAX_DATAGRAM {
                return Err(FrameError::Oversized);
            }
            if self.buf.len() < LEN + len {
                return Ok(None);
            }
            let datagram: Vec<u8> = self.buf.drain(..LEN + len).skip(LEN).collect();
            if let Some(message) = self.reassembler.push(&datagram)? {
                return Ok(Some(message));
            }
        }
    }

    /// The next complete message, decoded.
    pub fn decode_next<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        match self.next_message()? {
            Some(message) => Ok(Some(codec::decode(&message.bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether bytes of an unfinished message are held (a stream that ends now ends mid-message).
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty() || self.reassembler.in_progress()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_any_split_of_the_stream() {
        let big: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        let mut wire = encode(&big).unwrap();
        wire.extend(encode(&7u32).unwrap());
        for step in [1, 3, 4096, 65_540, wire.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m.bytes);
                }
            }
            assert_eq!(got.len(), 2, "step {step}");
            assert_eq!(codec::decode::<Vec<u8>>(&got[0]).unwrap(), big);
            assert_eq!(codec::decode::<u32>(&got[1]).unwrap(), 7);
            assert!(!d.in_progress());
        }
    }

    #[test]
    fn bad_lengths_are_refused_before_buffering() {
        let mut d = Decoder::default();
        d.push(&0u32.to_le_bytes());
        assert_eq!(d.next_message(), Err(FrameError::Empty));
        let mut d = Decoder::default();
        d.push(&(MAX_DATAGRAM as u32 + 1).to_le_bytes());
        assert_eq!(d.next_message(), Err(FrameError::Oversized));
        let mut d = Decoder::default();
        d.push(&[2, 0, 0, 0, 0x80, 1]);
        assert_eq!(d.next_message(), Err(FrameError::UnknownFlags(0x80)));
    }
}
