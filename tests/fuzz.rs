//! Fuzzing on stable Rust, inside the test suite: a seeded mutation fuzzer (bit flips,
//! interesting integers, truncation, insertion, deletion, splicing, random bytes) over valid
//! seed inputs, against four targets:
//!
//! - `batch`: the record batch decoder (header, CRC, codec, records, views vs owned records);
//!   half the mutants get their length and CRC fixed up, so the record decoder behind the CRC
//!   is reached, not just the checksum;
//! - `envelope`: protobuf decode of every request and response message kind;
//! - `frame`: the QUIC frame reader (length prefix, kind, body) with its size limit;
//! - `decompress`: the LZ4 and zstd decompressors with an output limit.
//!
//! Every input must come back as `Ok` or a typed error: a panic is caught, counted, and printed
//! with its input in hex, and the test fails. This binary's allocator is capped while the
//! fuzzer runs: a few times the configured decode limit, nowhere near the sizes hostile inputs
//! claim (up to 4 GiB), so an allocation sized from untrusted input aborts the run.
//!
//! CI runs 100,000 inputs per target (about a second). The full run is one command (5 M per target, ~15 s):
//!
//! ```text
//! cargo test --release -p streamhouse --test fuzz -- --ignored --nocapture
//! ```
//!
//! `FUZZ_INPUTS=N` sets the count per target and `FUZZ_SEED=S` the seed of either test.

mod support;

use bytes::{Bytes, BytesMut};
use cap::Cap;
use std::alloc::System;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use streamhouse::batch::{DecodeLimits, Header, ProducerStamp, Record};
use streamhouse::codec::{Codec, NoCompression};
use streamhouse::proto::v1::{
    Acks, AgentInfo, ErrorCode, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
    PartitionBatch, PartitionMetadata, PartitionResult, ProduceRequest, ProduceResponse,
    TopicMetadata,
};
use streamhouse::transport::frame::{self, decode_request, decode_response, read_frame};
use streamhouse::transport::{RequestMessage, Response};
use streamhouse_codecs::{Lz4, Zstd};
use support::rng::Rng;
use support::{decode, encode, input, reseal};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Largest decoded output (records block, decompressed block) any target may produce.
const LIMIT: usize = 1 << 20;
/// Largest frame the frame reader accepts.
const FRAME_LIMIT: usize = 64 * 1024;
/// Room for codec contexts, the fuzzer's own buffers and a panic message.
const ALLOWANCE: usize = 2 << 20;

const INTERESTING_32: [i32; 9] = [0, 1, -1, 127, 128, 0xFFFF, 1 << 20, i32::MAX, i32::MIN];
const INTERESTING_8: [u8; 6] = [0, 1, 0x7F, 0x80, 0xFE, 0xFF];

/// One mutant of `seed`, written into `out`. `from` keeps mutations at or after that position
/// (a header left intact reaches the code behind it).
fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>], from: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(seed);
    for _ in 0..1 + rng.below(4) {
        let start = from.min(out.len());
        let pos = start + rng.below(out.len() - start + 1);
        match rng.below(9) {
            0 if pos < out.len() => out[pos] ^= 1 << rng.below(8),
            1 if pos < out.len() => out[pos] = INTERESTING_8[rng.below(INTERESTING_8.len())],
            2 if pos + 4 <= out.len() => {
                let value = INTERESTING_32[rng.below(INTERESTING_32.len())];
                out[pos..pos + 4].copy_from_slice(&value.to_be_bytes());
            }
            3 => out.truncate(pos),
            4 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(pos..pos, bytes);
            }
            5 if pos < out.len() => {
                let end = (pos + 1 + rng.below(32)).min(out.len());
                out.drain(pos..end);
            }
            6 => {
                // Splice in a piece of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let a = rng.below(other.len() + 1);
                let b = (a + rng.below(64)).min(other.len());
                out.splice(pos..pos, other[a..b].iter().copied());
            }
            7 if pos < out.len() => {
                // An LEB128 varint that never ends, or overflows.
                let n = 1 + rng.below(12);
                out.splice(pos..pos, std::iter::repeat_n(0xFF, n));
            }
            8 if rng.chance(16) => {
                out.clear();
                let n = rng.below(256);
                out.extend((0..n).map(|_| rng.next() as u8));
            }
            _ => {}
        }
    }
}

/// How one target fared.
#[derive(Default)]
struct Tally {
    inputs: u64,
    ok: u64,
    errors: u64,
    panics: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `target` on `count` mutants of `seeds`; `prepare` may fix up a mutant before use.
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    count: u64,
    seed: u64,
    from: usize,
    mut prepare: impl FnMut(&mut Rng, Vec<u8>) -> Vec<u8>,
    mut target: impl FnMut(&[u8]) -> bool,
) -> Tally {
    let mut rng = Rng(seed ^ name.len() as u64 ^ 0x5EED);
    let mut tally = Tally::default();
    let mut mutant = Vec::new();
    let started = Instant::now();
    for _ in 0..count {
        let base = &seeds[rng.below(seeds.len())];
        mutate(&mut rng, base, seeds, from, &mut mutant);
        let input = prepare(&mut rng, std::mem::take(&mut mutant));
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(true) => tally.ok += 1,
            Ok(false) => tally.errors += 1,
            Err(_) => {
                if tally.panics.len() < 5 {
                    tally.panics.push(hex(&input));
                }
                tally.errors += 1;
            }
        }
        tally.inputs += 1;
        mutant = input;
    }
    println!(
        "fuzz {name}: {} inputs in {:.1?}, {} decoded, {} typed errors, {} panics",
        tally.inputs,
        started.elapsed(),
        tally.ok,
        tally.errors - tally.panics.len() as u64,
        tally.panics.len()
    );
    tally
}

fn batch_seeds() -> Vec<Vec<u8>> {
    let big = vec![b'x'; 3_000];
    let records = [
        input(
            1_700_000_000_000,
            Some(b"key"),
            Some(b"{\"event\":\"click\"}"),
        ),
        input(1_700_000_000_005, None, Some(&big)),
        input(1_699_999_999_000, Some(b""), None),
        Record {
            headers: vec![
                Header {
                    key: "trace".into(),
                    value: Some(Bytes::from_static(b"abc")),
                },
                Header {
                    key: "empty".into(),
                    value: None,
                },
            ],
            ..input(1_700_000_000_001, Some(b"k2"), Some(b"v2"))
        },
    ];
    let stamp = ProducerStamp {
        producer_id: 77,
        producer_epoch: 1,
        base_sequence: 10,
    };
    let codecs: Vec<Arc<dyn Codec>> = vec![
        Arc::new(NoCompression),
        Arc::new(Lz4),
        Arc::new(Zstd::new(1)),
    ];
    let mut seeds = Vec::new();
    for codec in &codecs {
        for n in [1, 2, 4] {
            seeds.push(encode(&records[..n], stamp, codec.as_ref()).to_vec());
        }
        seeds.push(encode(&records[..1], ProducerStamp::NONE, codec.as_ref()).to_vec());
    }
    seeds
}

fn request_seeds() -> Vec<RequestMessage> {
    vec![
        RequestMessage::Produce(ProduceRequest {
            acks: Acks::Durable as i32,
            timeout_ms: 30_000,
            batches: vec![
                PartitionBatch {
                    topic: "orders".into(),
                    partition: 3,
                    batch: Bytes::from(batch_seeds().swap_remove(1)),
                },
                PartitionBatch {
                    topic: "t".into(),
                    partition: 0,
                    batch: Bytes::from_static(b"not really a batch"),
                },
            ],
        }),
        RequestMessage::Metadata(MetadataRequest {
            topics: vec!["orders".into(), "events".into()],
        }),
        RequestMessage::Fetch(FetchRequest {
            topic: "orders".into(),
            partition: 1,
            offset: 1_000,
            max_bytes: 1 << 20,
            max_wait_ms: 100,
        }),
    ]
}

fn response_seeds() -> Vec<Response> {
    vec![
        Response::Produce(ProduceResponse {
            results: vec![PartitionResult {
                topic: "orders".into(),
                partition: 3,
                error_code: 0,
                error_message: String::new(),
                base_offset: 12_345,
                log_append_time_ms: -1,
                log_start_offset: 0,
                leader: None,
            }],
            throttle_ms: 0,
            durability: 0,
        }),
        Response::Metadata(MetadataResponse {
            agents: vec![AgentInfo {
                id: 1,
                endpoints: vec![
                    "grpc://127.0.0.1:9092".into(),
                    "quic://127.0.0.1:9093".into(),
                ],
            }],
            topics: vec![TopicMetadata {
                name: "orders".into(),
                error_code: 0,
                error_message: String::new(),
                partition_count: 1,
                partitions: vec![PartitionMetadata {
                    partition: 0,
                    leader_id: 1,
                    ..PartitionMetadata::default()
                }],
            }],
            responder_id: 1,
            error_code: ErrorCode::Unauthenticated as i32,
            error_message: "no credentials".into(),
        }),
        Response::Fetch(FetchResponse {
            topic: "orders".into(),
            partition: 0,
            high_watermark: 10,
            batches: vec![Bytes::from(batch_seeds().swap_remove(0))],
            ..FetchResponse::default()
        }),
    ]
}

/// Polls a future that never waits (it reads from a slice) to its end.
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read from a slice waited"),
    }
}

fn run(count: u64, seed: u64) {
    let limits = DecodeLimits {
        max_uncompressed_bytes: LIMIT,
        ..DecodeLimits::default()
    };
    let batches = batch_seeds();
    let request_frames: Vec<Vec<u8>> = request_seeds()
        .iter()
        .map(|r| frame::encode_request(r, frame::MAX_FRAME).unwrap())
        .collect();
    let response_frames: Vec<Vec<u8>> = response_seeds()
        .iter()
        .map(|r| frame::encode_response(r, frame::MAX_FRAME).unwrap())
        .collect();
    // Message bodies: the frames without their 4-byte length and kind byte.
    let kinds: Vec<u8> = request_frames
        .iter()
        .chain(&response_frames)
        .map(|f| f[4])
        .collect();
    let bodies: Vec<Vec<u8>> = request_frames
        .iter()
        .chain(&response_frames)
        .map(|f| f[5..].to_vec())
        .collect();
    let frames: Vec<Vec<u8>> = request_frames
        .iter()
        .chain(&response_frames)
        .cloned()
        .collect();
    let lz4 = Lz4;
    let zstd = Zstd::new(1);
    let text: Vec<u8> = b"{\"user\":42,\"event\":\"page_view\",\"path\":\"/a/b\"}\n"
        .iter()
        .copied()
        .cycle()
        .take(20_000)
        .collect();
    let mut compressed = Vec::new();
    for len in [0, 1, 100, 5_000, 20_000] {
        for codec in [&lz4 as &dyn Codec, &zstd] {
            let mut out = BytesMut::new();
            codec.compress(&text[..len], &mut out).unwrap();
            // The first byte says which codec, so one target covers both.
            compressed.push([&[codec.id().get()][..], &out].concat());
        }
    }

    // Warm up without the cap: codec contexts, thread-locals and the panic machinery.
    let _ = decode(Bytes::from(batches[5].clone()), &limits);
    // Panics are caught and reported with their input; the default hook's backtraces would
    // only bury that report.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let _ = catch_unwind(|| panic!("warm-up"));
    let budget = 4 * LIMIT + ALLOWANCE;
    ALLOCATOR.set_limit(ALLOCATOR.allocated() + budget).unwrap();

    let tallies = [
        fuzz(
            "batch",
            &batches,
            count,
            seed,
            0,
            |rng, mutant| {
                if mutant.len() >= 17 && rng.chance(2) {
                    reseal(mutant).to_vec()
                } else {
                    mutant
                }
            },
            |input| decode(Bytes::copy_from_slice(input), &limits).is_ok(),
        ),
        fuzz(
            "envelope",
            &bodies,
            count,
            seed,
            0,
            |_, mutant| mutant,
            |input| {
                let mut ok = false;
                for &kind in &kinds {
                    ok |= decode_request(kind, input).is_ok();
                    ok |= decode_response(kind, input).is_ok();
                }
                ok
            },
        ),
        fuzz(
            "frame",
            &frames,
            count,
            seed,
            0,
            |_, mutant| mutant,
            |input| {
                let mut reader = input;
                match ready(read_frame(&mut reader, FRAME_LIMIT)) {
                    Ok(Some((kind, body))) => {
                        assert!(body.len() < FRAME_LIMIT, "a frame over the limit was read");
                        decode_request(kind, &body).is_ok() || decode_response(kind, &body).is_ok()
                    }
                    Ok(None) => true,
                    Err(_) => false,
                }
            },
        ),
        fuzz(
            "decompress",
            &compressed,
            count,
            seed,
            1,
            |_, mutant| mutant,
            |input| {
                let Some((&id, block)) = input.split_first() else {
                    return false;
                };
                let codec: &dyn Codec = if id == lz4.id().get() { &lz4 } else { &zstd };
                let mut out = BytesMut::new();
                let ok = codec.decompress(block, &mut out, LIMIT).is_ok();
                assert!(out.len() <= LIMIT, "{} bytes out past the limit", out.len());
                ok
            },
        ),
    ];
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    std::panic::set_hook(hook);

    let mut failed = Vec::new();
    for (name, tally) in ["batch", "envelope", "frame", "decompress"]
        .iter()
        .zip(&tallies)
    {
        assert_eq!(tally.inputs, count);
        assert!(
            tally.ok > 0,
            "{name}: no mutant decoded: the seeds are broken"
        );
        assert!(
            tally.errors > 0,
            "{name}: no mutant was rejected: the mutator is broken"
        );
        for input in &tally.panics {
            failed.push(format!("{name} (seed {seed}) panicked on {input}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fuzz_every_decoder() {
    run(setting("FUZZ_INPUTS", 100_000), setting("FUZZ_SEED", 1));
}

#[test]
#[ignore = "long: five million inputs per target; run with --release"]
fn fuzz_every_decoder_long() {
    run(setting("FUZZ_INPUTS", 5_000_000), setting("FUZZ_SEED", 2));
}

/// The harness itself: a target that panics on some inputs is caught and reported, so a
/// decoder panic could not pass unnoticed.
#[test]
fn the_harness_reports_panics() {
    let seeds = vec![vec![0u8; 8]];
    let tally = fuzz(
        "self-test",
        &seeds,
        2_000,
        9,
        0,
        |_, m| m,
        |input| {
            assert!(!input.contains(&0xFF), "a planted bug");
            true
        },
    );
    assert!(!tally.panics.is_empty(), "the planted panic was not caught");
    assert!(tally.ok > 0);
}
