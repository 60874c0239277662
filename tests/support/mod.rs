//! Shared helpers for the integration tests: record strategies and batch encoding shortcuts.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

pub mod agent;
pub mod rng;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use std::sync::Arc;
use streamhouse::batch::{
    Batch, BatchBuilder, BatchError, DecodeLimits, HEADER_LEN, Header, ProducerStamp, Record,
};
use streamhouse::codec::{Codec, CodecId, Codecs, NoCompression};
use streamhouse_codecs::{Lz4, Zstd};

/// A record to encode, in the shape the decoder hands back (offset is the position).
pub fn input(timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Record {
    Record {
        offset: 0,
        timestamp,
        key: key.map(Bytes::copy_from_slice),
        value: value.map(Bytes::copy_from_slice),
        headers: Vec::new(),
    }
}

/// Every shipped codec.
pub fn codecs() -> Vec<Arc<dyn Codec>> {
    vec![
        Arc::new(NoCompression),
        Arc::new(Lz4),
        Arc::new(Zstd::new(1)),
        Arc::new(Zstd::default()),
    ]
}

/// A registry with every shipped codec, shared so its codec contexts are reused.
pub fn registry() -> &'static Codecs {
    static CODECS: std::sync::OnceLock<Codecs> = std::sync::OnceLock::new();
    CODECS.get_or_init(streamhouse_codecs::all)
}

/// Encodes `records` into one batch.
pub fn encode(records: &[Record], stamp: ProducerStamp, codec: &dyn Codec) -> Bytes {
    let mut builder = BatchBuilder::new();
    for r in records {
        let before = builder.encoded_len();
        let expected = builder.record_len(
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            &r.headers,
        );
        builder
            .append(
                r.timestamp,
                r.key.as_deref(),
                r.value.as_deref(),
                &r.headers,
            )
            .expect("append");
        assert_eq!(
            builder.encoded_len() - before,
            expected,
            "record_len is exact"
        );
    }
    builder.finish(stamp, codec).expect("finish")
}

/// Parses and fully decodes a batch, through both the borrowed and the owned front end, and
/// checks that they agree on every record and on whether the batch is valid.
pub fn decode(bytes: Bytes, limits: &DecodeLimits) -> Result<(Batch, Vec<Record>), BatchError> {
    let batch = Batch::parse(bytes, limits)?;
    let block = batch.record_block(registry())?;
    let views: Result<Vec<Record>, BatchError> = block
        .iter()
        .map(|view| {
            view.map(|v| Record {
                offset: v.offset,
                timestamp: v.timestamp,
                key: v.key.map(Bytes::copy_from_slice),
                value: v.value.map(Bytes::copy_from_slice),
                headers: v
                    .headers
                    .iter()
                    .map(|(key, value)| Header {
                        key: key.to_owned(),
                        value: value.map(Bytes::copy_from_slice),
                    })
                    .collect(),
            })
        })
        .collect();
    let owned: Result<Vec<Record>, BatchError> = block.into_records().collect();
    match (&views, &owned) {
        (Ok(v), Ok(o)) => assert_eq!(v, o, "views and owned records differ"),
        (Err(v), Err(o)) => assert_eq!(v.to_string(), o.to_string()),
        _ => panic!("views and owned records disagree: {views:?} vs {owned:?}"),
    }
    Ok((batch, owned?))
}

/// A batch of `records` small records stamped with producer `id`, `epoch` and `sequence`.
pub fn idempotent_batch(id: i64, epoch: i16, sequence: i32, records: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        builder
            .append(1_700_000_000_000 + i as i64, None, Some(b"value"), &[])
            .unwrap();
    }
    let stamp = ProducerStamp {
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: sequence,
    };
    builder.finish(stamp, &NoCompression).unwrap()
}

/// Bytes with sizes skewed small, sometimes empty, rarely large.
pub fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..48),
        2 => Just(Vec::new()),
        // Compressible text, so compressed batches really take the compressed path.
        2 => (0usize..2_000).prop_map(|n| b"streamhouse event ".iter().copied().cycle().take(n).collect()),
        1 => proptest::collection::vec(any::<u8>(), 1_000..20_000),
    ]
}

pub fn header() -> impl Strategy<Value = Header> {
    (
        "[a-z\u{e9}\u{1F600}-]{0,12}",
        proptest::option::of(payload().prop_map(Bytes::from)),
    )
        .prop_map(|(key, value)| Header { key, value })
}

/// One record to encode; timestamps anywhere in i64, deltas of either sign.
pub fn record() -> impl Strategy<Value = Record> {
    (
        prop_oneof![3 => 1_600_000_000_000i64..1_900_000_000_000, 1 => any::<i64>()],
        proptest::option::of(payload()),
        proptest::option::of(payload()),
        proptest::collection::vec(header(), 0..3),
    )
        .prop_map(|(timestamp, key, value, headers)| Record {
            offset: 0,
            timestamp,
            key: key.map(Bytes::from),
            value: value.map(Bytes::from),
            headers,
        })
}

/// 0..max records, mostly few, sometimes up to `max`.
pub fn records(max: usize) -> impl Strategy<Value = Vec<Record>> {
    prop_oneof![
        3 => proptest::collection::vec(record(), 0..20),
        1 => proptest::collection::vec(record(), 0..max),
    ]
}

pub fn stamp() -> impl Strategy<Value = ProducerStamp> {
    prop_oneof![
        Just(ProducerStamp::NONE),
        (0i64..i64::MAX, 0i16..i16::MAX, 0i32..i32::MAX).prop_map(|(id, epoch, seq)| {
            ProducerStamp {
                producer_id: id,
                producer_epoch: epoch,
                base_sequence: seq,
            }
        }),
    ]
}

/// Number of proptest cases: `PROPTEST_CASES` if set, else `default` (kept small for CI).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Re-seals a batch after tampering: fixes the length field and the CRC so that only the
/// record-level checks stand between the decoder and the tampered bytes.
pub fn reseal(mut batch: Vec<u8>) -> Bytes {
    let len = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&batch[17..]);
    batch[13..17].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

/// A batch header with a valid CRC around an arbitrary records block.
pub fn forge(codec: CodecId, count: i32, block: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i64(0);
    b.put_i32(0); // length, fixed by reseal
    b.put_u8(1);
    b.put_u32(0); // crc, fixed by reseal
    b.put_u16(u16::from(codec.get()));
    b.put_i32(count.wrapping_sub(1));
    b.put_i64(1_700_000_000_000);
    b.put_i64(1_700_000_000_000);
    b.put_i64(-1);
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i32(count);
    assert_eq!(b.len(), HEADER_LEN);
    b.put_slice(block);
    reseal(b.to_vec())
}
