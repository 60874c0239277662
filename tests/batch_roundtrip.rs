//! Encode → decode round trips of record batches under every codec.

mod support;

use bytes::Bytes;
use proptest::prelude::*;
use streamhouse::batch::{
    Batch, BatchBuilder, DecodeLimits, HEADER_LEN, Header, NO_TIMESTAMP, ProducerStamp,
    set_base_offset,
};
use streamhouse::codec::{CodecId, NoCompression};
use support::{codecs, decode, encode, input};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(64)))]

    /// Arbitrary records (empty and large keys and values, headers, 0..1000 records) come back
    /// identical, at offsets base + position, under every codec.
    #[test]
    fn round_trip_under_every_codec(
        records in support::records(1000),
        stamp in support::stamp(),
        base_offset in 0i64..i64::MAX / 2,
    ) {
        for codec in codecs() {
            let wire = encode(&records, stamp, codec.as_ref());
            let mut stored = wire.to_vec();
            set_base_offset(&mut stored, base_offset).unwrap();
            let (batch, decoded) = decode(Bytes::from(stored), &DecodeLimits::default())
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", codec.id())))?;

            let h = batch.header();
            prop_assert!(h.codec == codec.id() || h.codec == CodecId::NONE);
            prop_assert_eq!(h.record_count as usize, records.len());
            prop_assert_eq!(h.producer, stamp);
            prop_assert_eq!(h.base_offset, base_offset);
            let first = records.first().map_or(NO_TIMESTAMP, |r| r.timestamp);
            let max = records.iter().map(|r| r.timestamp).max().unwrap_or(NO_TIMESTAMP);
            prop_assert_eq!(h.first_timestamp, first);
            prop_assert_eq!(h.max_timestamp, max);

            prop_assert_eq!(decoded.len(), records.len());
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base_offset + i as i64);
                prop_assert_eq!(got.timestamp, want.timestamp);
                prop_assert_eq!(&got.key, &want.key);
                prop_assert_eq!(&got.value, &want.value);
                prop_assert_eq!(&got.headers, &want.headers);
            }
        }
    }
}

#[test]
fn uncompressed_keys_and_values_are_slices_of_the_batch() {
    let records: Vec<_> = (0..50)
        .map(|i| input(1_700_000_000_000 + i, Some(b"key"), Some(&[b'v'; 100])))
        .collect();
    let wire = encode(&records, ProducerStamp::NONE, &NoCompression);
    let range = wire.as_ptr_range();
    let (_, decoded) = decode(wire.clone(), &DecodeLimits::default()).unwrap();
    for r in &decoded {
        for field in [r.key.as_ref().unwrap(), r.value.as_ref().unwrap()] {
            assert!(range.contains(&field.as_ptr()), "copied instead of sliced");
        }
    }
}

#[test]
fn stamping_the_base_offset_keeps_the_crc() {
    let records = [input(5, None, Some(b"a")), input(6, Some(b"k"), None)];
    let wire = encode(&records, ProducerStamp::NONE, &NoCompression);
    let crc_before = wire[13..17].to_vec();
    for offset in [0, 1, 1 << 40, i64::MAX - 1] {
        let mut stored = wire.to_vec();
        set_base_offset(&mut stored, offset).unwrap();
        assert_eq!(&stored[13..17], &crc_before[..]);
        let (batch, decoded) = decode(Bytes::from(stored), &DecodeLimits::default()).unwrap();
        assert_eq!(batch.header().base_offset, offset);
        assert_eq!(batch.header().last_offset(), offset + 1);
        assert_eq!(decoded[1].offset, offset + 1);
    }
    assert!(set_base_offset(&mut [0u8; HEADER_LEN - 1], 1).is_err());
}

#[test]
fn empty_batch_round_trips() {
    let wire = BatchBuilder::new()
        .finish(ProducerStamp::NONE, &NoCompression)
        .unwrap();
    assert_eq!(wire.len(), HEADER_LEN);
    let (batch, decoded) = decode(wire, &DecodeLimits::default()).unwrap();
    assert!(decoded.is_empty());
    assert_eq!(batch.header().last_offset_delta, -1);
}

#[test]
fn incompressible_batches_fall_back_to_no_codec() {
    // Bytes from a simple LCG: incompressible for LZ4 and zstd.
    let mut x = 12345u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    for codec in codecs() {
        let wire = encode(
            &[input(1, None, Some(&noise))],
            ProducerStamp::NONE,
            codec.as_ref(),
        );
        let (batch, decoded) = decode(wire, &DecodeLimits::default()).unwrap();
        assert_eq!(batch.header().codec, CodecId::NONE, "{}", codec.id());
        assert_eq!(decoded[0].value.as_deref(), Some(&noise[..]));
    }
}

#[test]
fn compressible_batches_use_the_codec_and_shrink() {
    let mut events = streamhouse::payload::EventGenerator::new(1);
    let records: Vec<_> = (0..500)
        .map(|i| {
            let (k, v) = events.next_event(100);
            input(1_700_000_000_000 + i, Some(&k), Some(&v))
        })
        .collect();
    let plain = encode(&records, ProducerStamp::NONE, &NoCompression).len();
    for codec in codecs().into_iter().skip(1) {
        let wire = encode(&records, ProducerStamp::NONE, codec.as_ref());
        assert!(
            wire.len() * 2 < plain,
            "{}: {} vs {plain}",
            codec.id(),
            wire.len()
        );
        let (batch, decoded) = decode(wire, &DecodeLimits::default()).unwrap();
        assert_eq!(batch.header().codec, codec.id());
        assert_eq!(decoded.len(), 500);
    }
}

#[test]
fn headers_keep_order_duplicates_and_nulls() {
    let headers = vec![
        Header::new("trace", "1"),
        Header::new("trace", "2"),
        Header {
            key: String::new(),
            value: None,
        },
        Header::new("ünïcødé", Bytes::new()),
    ];
    let mut builder = BatchBuilder::new();
    builder.append(1, Some(b""), None, &headers).unwrap();
    let wire = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
    let (_, decoded) = decode(wire, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded[0].headers, headers);
    assert_eq!(
        decoded[0].key.as_deref(),
        Some(&b""[..]),
        "empty key is not a null key"
    );
    assert_eq!(decoded[0].value, None);
}

#[test]
fn parse_validates_before_records_are_read() {
    let wire = encode(
        &[input(1, None, Some(b"x"))],
        ProducerStamp::NONE,
        &NoCompression,
    );
    let batch = Batch::parse(wire.clone(), &DecodeLimits::default()).unwrap();
    assert_eq!(batch.as_bytes(), &wire);
    assert_eq!(batch.into_bytes(), wire);
}
