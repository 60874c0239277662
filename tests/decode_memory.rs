//! Decompression bombs and oversized claims cost no memory beyond the configured limits.
//!
//! This test binary counts every allocation through a capped global allocator and holds a
//! single test, so nothing else allocates concurrently. While hostile batches are decoded the
//! cap is set to what is allocated now plus the decode limit and a small allowance for codec
//! contexts: an allocation past it fails, which aborts this binary and fails the test.

mod support;

use bytes::Bytes;
use cap::Cap;
use std::alloc::System;
use std::io::Write;
use streamhouse::batch::{BatchError, DecodeLimits};
use streamhouse::codec::{CodecError, CodecId};
use support::{decode, forge};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Largest records block a decode may produce in this test.
const LIMIT: usize = 1 << 20;
/// Room for zstd's decompression context and the decoder's small buffers.
const ALLOWANCE: usize = 1 << 20;

fn lz4_block(data: &[u8]) -> Vec<u8> {
    lz4::block::compress(data, None, true).unwrap()
}

fn zstd_unsized(data: &[u8], window_log: u32) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    encoder.window_log(window_log).unwrap();
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A name, a hostile batch, and the error it must produce.
type Case = (&'static str, Bytes, fn(&BatchError) -> bool);

#[test]
fn hostile_batches_stay_within_the_memory_limit() {
    let zeros = vec![0u8; 64 << 20];
    let mut lz4_lie = (900_000u32).to_le_bytes().to_vec();
    lz4_lie.extend_from_slice(&[0u8; 64]);
    // Record 0 of an uncompressed block, declaring 2^31-1 headers.
    let header_bomb = [0x0c, 0, 0, 0, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f, 0];

    let cases: Vec<Case> = vec![
        (
            "lz4: 64 MiB of zeros in a 256 KiB block",
            forge(CodecId::LZ4, 1, &lz4_block(&zeros)),
            |e| matches!(e, BatchError::Codec(CodecError::LimitExceeded { .. })),
        ),
        (
            "lz4: 64-byte block claiming 900 KB",
            forge(CodecId::LZ4, 1, &lz4_lie),
            |e| matches!(e, BatchError::Codec(CodecError::Corrupt { .. })),
        ),
        (
            "zstd: 64 MiB of zeros, size declared",
            forge(CodecId::ZSTD, 1, &zstd::bulk::compress(&zeros, 1).unwrap()),
            |e| matches!(e, BatchError::Codec(CodecError::LimitExceeded { .. })),
        ),
        (
            "zstd: 64 MiB of zeros, size not declared, small window",
            forge(CodecId::ZSTD, 1, &zstd_unsized(&zeros, 17)),
            |e| matches!(e, BatchError::Codec(CodecError::LimitExceeded { .. })),
        ),
        (
            "zstd: 64 MiB of zeros, size not declared, 128 MiB window",
            forge(CodecId::ZSTD, 1, &zstd_unsized(&zeros, 27)),
            |e| matches!(e, BatchError::Codec(CodecError::Corrupt { .. })),
        ),
        (
            "header declares a million records in a 100-byte block",
            forge(CodecId::NONE, 1_000_000, &[0u8; 100]),
            |e| matches!(e, BatchError::RecordCountMismatch { .. }),
        ),
        (
            "record declares 2^31-1 headers",
            forge(CodecId::NONE, 1, &header_bomb),
            |e| matches!(e, BatchError::CorruptRecord { .. }),
        ),
    ];
    drop(zeros);
    let limits = DecodeLimits {
        max_uncompressed_bytes: LIMIT,
        ..DecodeLimits::default()
    };
    // Warm up once without the cap: codec contexts are created and pooled here.
    for (_, batch, _) in &cases {
        let _ = decode(batch.clone(), &limits);
    }

    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + LIMIT + ALLOWANCE)
        .unwrap();
    let mut outcomes = Vec::new();
    for (name, batch, expected) in &cases {
        let result = decode(batch.clone(), &limits);
        outcomes.push((
            *name,
            result
                .map(|_| ())
                .map_err(|e| (expected(&e), e.to_string())),
        ));
    }
    ALLOCATOR.set_limit(usize::MAX).unwrap();

    for (name, outcome) in outcomes {
        match outcome {
            Err((true, _)) => {}
            Err((false, error)) => panic!("{name}: unexpected error {error}"),
            Ok(()) => panic!("{name}: decoded"),
        }
    }
}
