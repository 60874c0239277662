//! Zigzag LEB128 varints, as Kafka's record format uses for every record field.
//!
//! Decoding is strict: a varint longer than its type (5 bytes for 32 bits, 10 for 64) or with
//! bits set past the type's width is an overflow, and running out of input is a truncation.

use bytes::{BufMut, BytesMut};

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// The varint is longer, or larger, than its type.
    Overflow,
}

#[inline]
fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

#[inline]
fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

#[inline]
fn unzigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline]
fn uvarint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Encoded length of `v` as a zigzag varint.
#[inline]
pub(crate) fn varint_len(v: i32) -> usize {
    uvarint_len(u64::from(zigzag32(v)))
}

/// Encoded length of `v` as a zigzag varlong.
#[inline]
pub(crate) fn varlong_len(v: i64) -> usize {
    uvarint_len(zigzag64(v))
}

#[inline]
fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Appends `v` as a zigzag varint.
#[inline]
pub(crate) fn put_varint(buf: &mut BytesMut, v: i32) {
    put_uvarint(buf, u64::from(zigzag32(v)));
}

/// Appends `v` as a zigzag varlong.
#[inline]
pub(crate) fn put_varlong(buf: &mut BytesMut, v: i64) {
    put_uvarint(buf, zigzag64(v));
}

/// Reads an unsigned LEB128 value of at most `max_bytes` bytes whose value fits `bits` bits.
#[inline]
fn get_uvarint(
    buf: &[u8],
    pos: &mut usize,
    max_bytes: usize,
    bits: u32,
) -> Result<u64, VarintError> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        let byte = *buf.get(*pos + i).ok_or(VarintError::Truncated)?;
        let shift = 7 * i as u32;
        let payload = u64::from(byte & 0x7f);
        // Bits that would land at or beyond the type's width make it an overflow.
        if shift + 7 > bits && payload >> (bits - shift) != 0 {
            return Err(VarintError::Overflow);
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Ok(value);
        }
    }
    Err(VarintError::Overflow)
}

/// Reads a zigzag varint at `*pos`, advancing `*pos` past it.
#[inline]
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, VarintError> {
    // Fast path: the one-byte varints that dominate real records (lengths < 64, deltas).
    if let Some(&byte) = buf.get(*pos)
        && byte & 0x80 == 0
    {
        *pos += 1;
        return Ok(unzigzag32(u32::from(byte)));
    }
    get_uvarint(buf, pos, 5, 32).map(|v| unzigzag32(v as u32))
}

/// Reads a zigzag varlong at `*pos`, advancing `*pos` past it.
#[inline]
pub(crate) fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    if let Some(&byte) = buf.get(*pos)
        && byte & 0x80 == 0
    {
        *pos += 1;
        return Ok(unzigzag64(u64::from(byte)));
    }
    get_uvarint(buf, pos, 10, 64).map(unzigzag64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_kafka_encoding() {
        // Values and bytes from Kafka's ByteUtilsTest.testVarintSerde.
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (-65, &[0x81, 0x01]),
            (8191, &[0xfe, 0x7f]),
            (-8192, &[0xff, 0x7f]),
            (8192, &[0x80, 0x80, 0x01]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, bytes) in cases {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(&buf[..], bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len());
            let mut pos = 0;
            assert_eq!(get_varint(bytes, &mut pos), Ok(value));
            assert_eq!(pos, bytes.len());
        }
    }

    #[test]
    fn rejects_overlong_and_oversized() {
        // Six bytes for a 32-bit varint.
        let mut pos = 0;
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut pos),
            Err(VarintError::Overflow)
        );
        // Five bytes, but the last one carries bits past 32.
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f], &mut pos),
            Err(VarintError::Overflow)
        );
        // Eleven bytes for a 64-bit varlong.
        assert_eq!(
            get_varlong(&[0xff; 11], &mut pos),
            Err(VarintError::Overflow)
        );
        // Ten bytes, the last carrying bits past 64.
        let mut ten = [0xffu8; 10];
        ten[9] = 0x02;
        assert_eq!(get_varlong(&ten, &mut pos), Err(VarintError::Overflow));
        assert_eq!(
            get_varint(&[0x80, 0x80], &mut pos),
            Err(VarintError::Truncated)
        );
        assert_eq!(get_varint(&[], &mut pos), Err(VarintError::Truncated));
        assert_eq!(pos, 0, "a failed read does not advance");
    }

    proptest! {
        #[test]
        fn varint_round_trip(v: i32) {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varint(&buf, &mut pos), Ok(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn varlong_round_trip(v: i64) {
            let mut buf = BytesMut::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&buf, &mut pos), Ok(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let mut pos = 0;
            let _ = get_varint(&bytes, &mut pos);
            let mut pos = 0;
            let _ = get_varlong(&bytes, &mut pos);
        }
    }
}
