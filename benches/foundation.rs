//! Micro-benchmarks of the network-free hot paths: batch encode/decode, CRC32C, codecs on
//! JSON-like events, and partition choice.
//!
//! Run with `cargo bench --bench foundation`. Batches hold 1000 records of 100 B or 1 KiB
//! values with 10-byte keys, from the seeded event generator in `streamhouse::payload`.

use bytes::{Bytes, BytesMut};
use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use std::num::NonZeroU32;
use streamhouse::batch::{Batch, BatchBuilder, DecodeLimits, HEADER_LEN, ProducerStamp};
use streamhouse::codec::{Codec, Codecs, NoCompression};
use streamhouse::partitioner::{Murmur2, Partitioner, RoundRobin, Sticky};
use streamhouse::payload::EventGenerator;
use streamhouse_codecs::{Lz4, Zstd};

const RECORDS: usize = 1000;
const TIMESTAMP: i64 = 1_764_115_200_000;

fn main() {
    divan::main();
}

/// Keys and values of `RECORDS` events with `value_len`-byte values.
fn events(value_len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut generator = EventGenerator::new(42);
    (0..RECORDS)
        .map(|_| generator.next_event(value_len))
        .collect()
}

fn build(events: &[(Vec<u8>, Vec<u8>)]) -> BatchBuilder {
    let size = events
        .iter()
        .map(|(k, v)| k.len() + v.len() + 16)
        .sum::<usize>()
        + HEADER_LEN;
    let mut builder = BatchBuilder::with_capacity(size);
    for (i, (key, value)) in events.iter().enumerate() {
        builder
            .append(TIMESTAMP + i as i64, Some(key), Some(value), &[])
            .unwrap();
    }
    builder
}

fn encoded(value_len: usize, codec: &dyn Codec) -> Bytes {
    build(&events(value_len))
        .finish(ProducerStamp::NONE, codec)
        .unwrap()
}

/// The uncompressed records block of a batch of events: what codecs compress.
fn records_block(value_len: usize) -> Bytes {
    encoded(value_len, &NoCompression).slice(HEADER_LEN..)
}

/// Appending 1000 records and sealing the batch (header + CRC32C), no compression.
#[divan::bench(args = [100, 1024])]
fn encode_batch(bencher: Bencher<'_, '_>, value_len: usize) {
    let events = events(value_len);
    bencher.counter(ItemsCount::new(RECORDS)).bench(|| {
        build(black_box(&events))
            .finish(ProducerStamp::NONE, &NoCompression)
            .unwrap()
    });
}

/// Parsing (length, magic, CRC32C) and iterating all 1000 records as owned records.
#[divan::bench(args = [100, 1024])]
fn decode_batch(bencher: Bencher<'_, '_>, value_len: usize) {
    let wire = encoded(value_len, &NoCompression);
    let codecs = Codecs::new();
    let limits = DecodeLimits::default();
    bencher.counter(ItemsCount::new(RECORDS)).bench(|| {
        let batch = Batch::parse(black_box(wire.clone()), &limits).unwrap();
        let mut n = 0usize;
        for record in batch.records(&codecs).unwrap() {
            n += record.unwrap().value.map_or(0, |v| v.len());
        }
        n
    });
}

/// Parsing and validating all 1000 records as borrowed views (what the agent does per batch).
#[divan::bench(args = [100, 1024])]
fn decode_batch_views(bencher: Bencher<'_, '_>, value_len: usize) {
    let wire = encoded(value_len, &NoCompression);
    let codecs = Codecs::new();
    let limits = DecodeLimits::default();
    bencher.counter(ItemsCount::new(RECORDS)).bench(|| {
        let batch = Batch::parse(black_box(wire.clone()), &limits).unwrap();
        let block = batch.record_block(&codecs).unwrap();
        let mut n = 0usize;
        for view in block.iter() {
            n += view.unwrap().value.map_or(0, <[u8]>::len);
        }
        n
    });
}

/// CRC32C (hardware) over a 64 KiB and a 1 MiB buffer.
#[divan::bench(args = [64 << 10, 1 << 20])]
fn crc32c(bencher: Bencher<'_, '_>, len: usize) {
    let data = vec![0xa5u8; len];
    bencher
        .counter(BytesCount::new(len))
        .bench(|| ::crc32c::crc32c(black_box(&data)));
}

fn codec(name: &str) -> Box<dyn Codec> {
    match name {
        "lz4" => Box::new(Lz4),
        "zstd1" => Box::new(Zstd::new(1)),
        "zstd3" => Box::new(Zstd::new(3)),
        _ => unreachable!(),
    }
}

const CODECS: &[&str] = &["lz4", "zstd1", "zstd3"];

/// Compressing the records block of a 1000-record batch (100 B values: ~117 KB; 1 KiB values:
/// ~1 MB). Throughput is of uncompressed bytes.
#[divan::bench(consts = [100, 1024], args = CODECS)]
fn compress<const VALUE_LEN: usize>(bencher: Bencher<'_, '_>, name: &str) {
    let codec = codec(name);
    let block = records_block(VALUE_LEN);
    let mut out = BytesMut::with_capacity(block.len() * 2);
    bencher
        .counter(BytesCount::new(block.len()))
        .bench_local(|| {
            out.clear();
            codec.compress(black_box(&block), &mut out).unwrap();
        });
}

/// Decompressing that block again. Throughput is of uncompressed bytes.
#[divan::bench(consts = [100, 1024], args = CODECS)]
fn decompress<const VALUE_LEN: usize>(bencher: Bencher<'_, '_>, name: &str) {
    let codec = codec(name);
    let block = records_block(VALUE_LEN);
    let mut compressed = BytesMut::new();
    codec.compress(&block, &mut compressed).unwrap();
    let mut out = BytesMut::with_capacity(block.len());
    bencher
        .counter(BytesCount::new(block.len()))
        .bench_local(|| {
            out.clear();
            codec
                .decompress(black_box(&compressed), &mut out, usize::MAX)
                .unwrap();
        });
}

/// Choosing partitions for 1000 records out of 12: keyed (murmur2) and keyless.
#[divan::bench(args = ["murmur2-keyed", "sticky-keyless", "round-robin-keyless"])]
fn partition(bencher: Bencher<'_, '_>, which: &str) {
    let keys: Vec<Vec<u8>> = events(10).into_iter().map(|(k, _)| k).collect();
    let partitions = NonZeroU32::new(12).unwrap();
    let (p, keyed): (Box<dyn Partitioner>, bool) = match which {
        "murmur2-keyed" => (Box::new(Murmur2), true),
        "sticky-keyless" => (Box::new(Sticky::with_seed(1)), false),
        _ => (Box::new(RoundRobin::new()), false),
    };
    bencher.counter(ItemsCount::new(RECORDS)).bench(|| {
        let mut sum = 0u32;
        for key in &keys {
            let key = keyed.then_some(key.as_slice());
            sum = sum.wrapping_add(p.partition(black_box("orders"), key, partitions));
        }
        sum
    });
}
