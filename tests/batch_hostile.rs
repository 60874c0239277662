//! Hostile input to the batch decoder: arbitrary bytes, every truncation, every bit flip, and
//! corrupted record blocks behind a valid CRC. The decoder must answer with an error or with
//! the original records — never panic.

mod support;

use bytes::Bytes;
use proptest::prelude::*;
use streamhouse::batch::{BatchError, DecodeLimits, HEADER_LEN, ProducerStamp, Record};
use streamhouse::codec::{CodecId, NoCompression};
use support::{codecs, decode, encode, forge, input, reseal};

/// A small batch of compressible records, so every codec really compresses it.
fn small_records() -> Vec<Record> {
    (0..5)
        .map(|i| {
            let value = format!("{{\"event\":\"click\",\"n\":{i},\"page\":\"/home/home/home\"}}");
            input(
                1_700_000_000_000 + i,
                Some(b"user-1"),
                Some(value.as_bytes()),
            )
        })
        .collect()
}

#[test]
fn every_truncation_is_an_error() {
    for codec in codecs() {
        let wire = encode(&small_records(), ProducerStamp::NONE, codec.as_ref());
        for cut in 0..wire.len() {
            let err = decode(wire.slice(..cut), &DecodeLimits::default()).unwrap_err();
            assert!(
                matches!(err, BatchError::Truncated { .. }),
                "{} cut at {cut}: {err}",
                codec.id()
            );
        }
        let mut longer = wire.to_vec();
        longer.push(0);
        assert!(matches!(
            decode(Bytes::from(longer), &DecodeLimits::default()),
            Err(BatchError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn every_single_bit_flip_is_caught() {
    for codec in codecs() {
        let records = small_records();
        let wire = encode(&records, ProducerStamp::NONE, codec.as_ref());
        let mut flips = 0;
        for bit in 0..wire.len() * 8 {
            let mut bad = wire.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode(Bytes::from(bad), &DecodeLimits::default()) {
                Err(_) => flips += 1,
                // The base offset is outside the CRC by design (the agent stamps it): a flip
                // there decodes to the original records at a different offset.
                Ok((batch, decoded)) => {
                    assert!(bit < 64, "{}: flip of bit {bit} went unnoticed", codec.id());
                    let base = batch.header().base_offset;
                    // Byte 0 is the most significant byte of the big-endian field.
                    assert_eq!(base, 1i64 << (8 * (7 - bit / 8) + bit % 8));
                    for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                        assert_eq!(got.offset, base.wrapping_add(i as i64));
                        assert_eq!((&got.key, &got.value), (&want.key, &want.value));
                    }
                }
            }
        }
        assert_eq!(flips, wire.len() * 8 - 64, "{}", codec.id());
    }
}

#[test]
fn forged_record_blocks_are_rejected() {
    let cases: &[(&str, i32, &[u8])] = &[
        (
            "record length overflows",
            1,
            &[0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0],
        ),
        ("negative record length", 1, &[0x01, 0, 0, 0, 0, 0, 0]),
        ("record longer than block", 1, &[0x7e, 0, 0, 0, 1, 1, 0]),
        (
            "offset delta is not the index",
            1,
            &[0x0c, 0, 0, 0x02, 1, 1, 0],
        ),
        ("key length below -1", 1, &[0x0c, 0, 0, 0, 0x03, 1, 0]),
        ("key runs past the record", 1, &[0x0c, 0, 0, 0, 0x20, 1, 0]),
        (
            "huge header count",
            1,
            &[0x0c, 0, 0, 0, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f, 0],
        ),
        (
            "fields shorter than record",
            1,
            &[0x0e, 0, 0, 0, 1, 1, 0, 0],
        ),
        (
            "count larger than records",
            2,
            &[0x0c, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "trailing bytes",
            1,
            &[0x0c, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("negative record count", -2, &[]),
        (
            "header key not utf-8",
            1,
            &[0x12, 0, 0, 0, 1, 1, 0x02, 0x02, 0xff, 1, 0],
        ),
        ("null header key", 1, &[0x0e, 0, 0, 0, 1, 1, 0x02, 1, 1, 0]),
    ];
    for &(name, count, block) in cases {
        let err = decode(forge(CodecId::NONE, count, block), &DecodeLimits::default());
        assert!(err.is_err(), "{name}: accepted");
    }
    // A well-formed forged record decodes: the forge itself is sound.
    let (_, ok) = decode(
        forge(CodecId::NONE, 1, &[0x0c, 0, 0, 0, 1, 1, 0]),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(ok[0].key, None);
}

#[test]
fn unknown_codec_ids_are_typed_errors() {
    for id in [1u8, 2, 5, 6, 7] {
        let id = CodecId::new(id).unwrap();
        let err = decode(forge(id, 1, b"whatever"), &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(&err, BatchError::Codec(streamhouse::codec::CodecError::Unsupported(got)) if *got == id),
            "{err}"
        );
        assert_eq!(
            err.code(),
            streamhouse::proto::v1::ErrorCode::UnsupportedCodec
        );
    }
    let mut attrs = encode(&small_records(), ProducerStamp::NONE, &NoCompression).to_vec();
    attrs[18] |= 0x80; // a reserved attribute bit
    assert!(matches!(
        decode(reseal(attrs), &DecodeLimits::default()),
        Err(BatchError::InvalidAttributes(_))
    ));
}

#[test]
fn limits_are_enforced() {
    let records: Vec<_> = (0..100)
        .map(|i| input(i, None, Some(&[7u8; 200])))
        .collect();
    let wire = encode(&records, ProducerStamp::NONE, &NoCompression);
    let tight = |f: fn(&mut DecodeLimits)| {
        let mut l = DecodeLimits::default();
        f(&mut l);
        decode(wire.clone(), &l).unwrap_err()
    };
    assert!(matches!(
        tight(|l| l.max_batch_bytes = 1000),
        BatchError::BatchTooLarge { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_records = 99),
        BatchError::TooManyRecords { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_record_bytes = 150),
        BatchError::RecordTooLarge { .. }
    ));
    assert!(matches!(
        tight(|l| l.max_uncompressed_bytes = 1000),
        BatchError::BatchTooLarge { .. }
    ));
    for codec in codecs().into_iter().skip(1) {
        let wire = encode(&records, ProducerStamp::NONE, codec.as_ref());
        let limits = DecodeLimits {
            max_uncompressed_bytes: 10_000,
            ..DecodeLimits::default()
        };
        let err = decode(wire, &limits).unwrap_err();
        assert_eq!(
            err.code(),
            streamhouse::proto::v1::ErrorCode::BatchTooLarge,
            "{}: {err}",
            codec.id()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(2_000)))]

    /// Arbitrary bytes: an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(Bytes::from(bytes), &DecodeLimits::default());
    }

    /// Arbitrary bytes behind a valid header and CRC, under every codec id: the record parser
    /// and the decompressors see the garbage directly.
    #[test]
    fn garbage_behind_a_valid_crc_never_panics(
        codec in 0u8..8,
        count in -1i32..40,
        block in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let _ = decode(forge(CodecId::new(codec).unwrap(), count, &block), &DecodeLimits::default());
    }

    /// Valid batches with bytes of the (decompressed) record block overwritten, resealed with a
    /// fresh CRC: whatever decodes must still be within the limits.
    #[test]
    fn mutated_record_blocks_never_panic(
        records in support::records(30),
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let wire = encode(&records, ProducerStamp::NONE, &NoCompression);
        let mut bad = wire.to_vec();
        if bad.len() > HEADER_LEN {
            for (at, byte) in &edits {
                let i = HEADER_LEN + at.index(bad.len() - HEADER_LEN);
                bad[i] = *byte;
            }
        }
        let limits = DecodeLimits::default();
        if let Ok((_, decoded)) = decode(reseal(bad), &limits) {
            prop_assert_eq!(decoded.len(), records.len());
            for r in decoded {
                prop_assert!(r.value.map_or(0, |v| v.len()) <= limits.max_record_bytes);
            }
        }
    }
}
