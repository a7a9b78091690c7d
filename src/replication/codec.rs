//! The encoding of the groups' log entries and snapshot bodies (bincode's
//! standard configuration, through serde), with decoding held to the size
//! of its input.
//!
//! bincode reads a string's or a byte buffer's length and allocates that
//! much before it reads the bytes, so a damaged length in a few bytes of
//! input asks for gigabytes (or overflows the capacity and panics).
//! bincode's limit bounds what a decode claims: each string's or buffer's
//! bytes, and each number's size in memory (a `u64` claims 8 bytes even
//! when it is written in 1). Every claimed byte of a string must be in the
//! input and no value claims more than 16 bytes per byte it is written in,
//! so a valid input claims at most 16 times its length: [`decode`] sets the
//! limit to the smallest of a few powers of two at least that, and a length
//! past it is an error, not an allocation. (Sequences and maps go through
//! serde, which caps what it reserves ahead by itself.)

use bincode::error::DecodeError;
use serde::de::DeserializeOwned;

/// Decodes a `T` from the front of `bytes`; returns it and the bytes read.
/// A length in the input that its own size cannot hold is
/// [`DecodeError::LimitExceeded`]; what one decode allocates is bounded by
/// 64 times the input's length (and 64 KiB).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    let config = bincode::config::standard();
    let claims = bytes.len().saturating_mul(16);
    // One instantiation per bound, smallest first: 64 KiB, 256 KiB, ... 1 TiB.
    macro_rules! bounded {
        ($($shift:literal)*) => {$(
            if claims <= 1usize << $shift {
                return bincode::serde::decode_from_slice(bytes, config.with_limit::<{ 1usize << $shift }>());
            }
        )*};
    }
    bounded!(16 18 20 22 24 26 28 30 32 34 36 38 40);
    bincode::serde::decode_from_slice(bytes, config.with_limit::<{ usize::MAX }>())
}

/// Encodes `value` as [`decode`] reads it.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        // Small numbers are written in a byte and claim their full size.
        let numbers: Vec<u128> = (0..5000).collect();
        let value = (numbers, "a name".to_string(), vec![vec![1u8, 2, 3]; 40], vec!["x".repeat(5000); 3]);
        let bytes = encode(&value).unwrap();
        let (back, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(value, back);
    }

    #[test]
    fn a_length_past_the_input_is_an_error_not_an_allocation() {
        // A string whose length says 4 GiB, then 3 bytes; and one whose
        // length overflows any capacity.
        for length in [u32::MAX as u64, u64::MAX] {
            let mut bytes = vec![253u8];
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(b"abc");
            let decoded = decode::<String>(&bytes);
            assert!(matches!(decoded, Err(DecodeError::LimitExceeded)), "{decoded:?}");
        }
    }

    #[test]
    fn a_string_as_long_as_its_input_allows_decodes() {
        // Just under the first bound and just over it.
        for len in [4090usize, 4100, 70_000] {
            let bytes = encode(&"y".repeat(len)).unwrap();
            let (back, _): (String, _) = decode(&bytes).unwrap();
            assert_eq!(back.len(), len);
        }
    }
}
