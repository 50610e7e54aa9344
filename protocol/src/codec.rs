//! bincode, configured once for every banger message.
//!
//! Decoding is always bounded: without a limit a nine-byte message can claim a 1 TiB `Vec` and
//! abort the process. A message must also use every byte it came in: trailing bytes mean the
//! sender and receiver disagree about the type, which is a protocol error, not something to skip.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Serialize, de::DeserializeOwned};

use crate::frame::MAX_MESSAGE;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message could not be encoded: {0}")]
    Encode(String),
    #[error("message is not valid: {0}")]
    Decode(String),
    #[error("message has {0} trailing byte(s) after a complete value")]
    Trailing(usize),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_claimed_length_is_refused_without_allocating() {
        // A Vec<u8> whose varint length says 2^40 bytes: 0xFD marks a u64 length.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode::<Vec<u8>>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn round_trip() {
        let v = (String::from("banger"), vec![1u8, 2, 3], Some(9u64));
        assert_eq!(decode::<(String, Vec<u8>, Option<u64>)>(&encode(&v).unwrap()).unwrap(), v);
    }
}
