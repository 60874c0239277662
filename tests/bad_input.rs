//! The bad-input table: hostile or broken input to the reference agent, one row per case, over
//! gRPC (batches and raw protobuf bodies) and QUIC (raw frames). Every row must get its typed
//! error — an `ErrorCode` in the produce answer, a gRPC status, or a QUIC stream reset code —
//! append nothing, and leave the agent serving: after every row a well-formed batch is still
//! accepted at the next offset.

mod support;

use bytes::{Buf, BufMut, Bytes};
use std::io::Write;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::{CodecId, NoCompression};
use streamhouse::proto::v1::{Acks, ErrorCode, PartitionBatch, ProduceRequest};
use streamhouse::transport::frame::{self, MAX_FRAME, read_frame};
use streamhouse::transport::{Connection, Endpoint, Request, RequestMessage, Response, Transport};
use streamhouse_agent::AgentConfig;
use streamhouse_grpc::GrpcTransport;
use streamhouse_quic::{QuicTransport, quinn, reset};
use support::agent::RunningAgent;
use support::{forge, reseal};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tower::ServiceExt;

const MAX_BATCH: usize = 64 * 1024;
const MAX_RECORD: usize = 4 * 1024;
/// Offset of the record count in the batch header (the last field of the 57-byte header).
const COUNT_AT: usize = 53;

fn batch(records: usize, value_len: usize, stamp: ProducerStamp) -> Bytes {
    let mut b = BatchBuilder::new();
    for _ in 0..records {
        b.append(1_700_000_000_000, None, Some(&vec![b'v'; value_len]), &[])
            .unwrap();
    }
    b.finish(stamp, &NoCompression).unwrap()
}

const PRODUCER_ID: i64 = 4242;

fn idempotent(seq: i32) -> ProducerStamp {
    ProducerStamp {
        producer_id: PRODUCER_ID,
        producer_epoch: 3,
        base_sequence: seq,
    }
}

/// What a row sends.
enum Input {
    /// A batch for a topic, in a well-formed produce request over gRPC.
    Batch(String, u32, Bytes),
    /// Raw bytes as the body of a gRPC Produce call.
    GrpcBody(Vec<u8>),
    /// Raw bytes on a QUIC stream.
    QuicStream(Vec<u8>),
}

/// What the row must get back.
#[derive(Debug, PartialEq)]
enum Expect {
    Code(ErrorCode),
    /// A gRPC status saying the request itself was malformed.
    MalformedRpc,
    /// A QUIC stream reset with this application code.
    Reset(u32),
}

fn row(name: &str, input: Input, expect: Expect) -> (String, Input, Expect) {
    (name.to_owned(), input, expect)
}

fn on_t(bytes: Bytes) -> Input {
    Input::Batch("t".into(), 0, bytes)
}

fn on_topic(topic: &str) -> Input {
    Input::Batch(topic.into(), 0, batch(1, 10, ProducerStamp::NONE))
}

/// A QUIC frame: u32 length of kind + body, the kind, the body.
fn quic_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(body);
    frame
}

fn lz4_block(data: &[u8]) -> Vec<u8> {
    lz4::block::compress(data, None, true).unwrap()
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn cases() -> Vec<(String, Input, Expect)> {
    use Expect::*;
    let mut bad_crc = batch(3, 10, ProducerStamp::NONE).to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    let mut truncated = batch(3, 10, ProducerStamp::NONE);
    truncated.truncate(truncated.len() - 5);
    let mut wrong_magic = batch(1, 10, ProducerStamp::NONE).to_vec();
    wrong_magic[12] = 2;
    let mut count_high = batch(2, 10, ProducerStamp::NONE).to_vec();
    count_high[COUNT_AT..COUNT_AT + 4].copy_from_slice(&3i32.to_be_bytes());
    let mut count_low = batch(3, 10, ProducerStamp::NONE).to_vec();
    count_low[COUNT_AT..COUNT_AT + 4].copy_from_slice(&2i32.to_be_bytes());
    // 8 MiB of zeros: a few KiB compressed, 128 times the batch limit inflated.
    let zeros = vec![0u8; 8 << 20];
    let lz4_bomb = forge(CodecId::LZ4, 1, &lz4_block(&zeros));
    let zstd_bomb = forge(CodecId::ZSTD, 1, &zstd_frame(&zeros));
    assert!(lz4_bomb.len() < MAX_BATCH && zstd_bomb.len() < MAX_BATCH);
    // Protobuf: field 1 (acks, a varint) sent as length-delimited; a varint cut short.
    let wrong_wire_type = vec![0x0a, 0x02, 0x01, 0x02];
    let truncated_varint = vec![0x10, 0xff, 0xff];

    vec![
        row(
            "record over max",
            on_t(batch(1, MAX_RECORD + 100, ProducerStamp::NONE)),
            Code(ErrorCode::RecordTooLarge),
        ),
        row(
            "batch over max",
            on_t(batch(40, 2_000, ProducerStamp::NONE)),
            Code(ErrorCode::BatchTooLarge),
        ),
        row(
            "crc mismatch",
            on_t(Bytes::from(bad_crc)),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "truncated batch",
            on_t(truncated),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "wrong magic",
            on_t(reseal(wrong_magic)),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "record count above records present",
            on_t(reseal(count_high)),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "record count below records present",
            on_t(reseal(count_low)),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "unknown codec id",
            on_t(forge(CodecId::new(6).unwrap(), 1, b"whatever")),
            Code(ErrorCode::UnsupportedCodec),
        ),
        row(
            "lz4 block inflating past the limit",
            on_t(lz4_bomb),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "zstd frame inflating past the limit",
            on_t(zstd_bomb),
            Code(ErrorCode::CorruptBatch),
        ),
        row(
            "empty batch",
            on_t(batch(0, 0, ProducerStamp::NONE)),
            Code(ErrorCode::InvalidRequest),
        ),
        row("topic \"\"", on_topic(""), Code(ErrorCode::InvalidTopic)),
        row("topic \".\"", on_topic("."), Code(ErrorCode::InvalidTopic)),
        row(
            "topic \"..\"",
            on_topic(".."),
            Code(ErrorCode::InvalidTopic),
        ),
        row(
            "topic of 250 characters",
            on_topic(&"a".repeat(250)),
            Code(ErrorCode::InvalidTopic),
        ),
        row(
            "topic \"a/b\"",
            on_topic("a/b"),
            Code(ErrorCode::InvalidTopic),
        ),
        row(
            "topic non-ASCII",
            on_topic("t\u{f6}pic"),
            Code(ErrorCode::InvalidTopic),
        ),
        row(
            "unknown topic",
            on_topic("missing"),
            Code(ErrorCode::UnknownTopic),
        ),
        row(
            "unknown partition",
            Input::Batch("t".into(), 7, batch(1, 10, ProducerStamp::NONE)),
            Code(ErrorCode::UnknownPartition),
        ),
        row(
            "sequence gap",
            on_t(batch(1, 10, idempotent(1_000_000))),
            Code(ErrorCode::OutOfOrderSequence),
        ),
        row(
            "stale epoch",
            on_t(batch(
                1,
                10,
                ProducerStamp {
                    producer_epoch: 2,
                    ..idempotent(2)
                },
            )),
            Code(ErrorCode::InvalidProducerEpoch),
        ),
        row(
            "grpc: \"GET \" request as the body",
            Input::GrpcBody(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            MalformedRpc,
        ),
        row(
            "grpc: protobuf with a truncated varint",
            Input::GrpcBody(truncated_varint.clone()),
            MalformedRpc,
        ),
        row(
            "grpc: protobuf with a wrong wire type",
            Input::GrpcBody(wrong_wire_type.clone()),
            MalformedRpc,
        ),
        row(
            "quic: 2 GiB length prefix",
            Input::QuicStream(vec![0x80, 0, 0, 0, 0x01, 1, 2, 3]),
            Reset(reset::FRAME_TOO_LARGE),
        ),
        row(
            "quic: negative length prefix",
            Input::QuicStream(vec![0xff, 0xff, 0xff, 0xfe, 0x01]),
            Reset(reset::FRAME_TOO_LARGE),
        ),
        row(
            "quic: \"GET \" as the length prefix",
            Input::QuicStream(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            Reset(reset::FRAME_TOO_LARGE),
        ),
        row(
            "quic: truncated frame",
            Input::QuicStream([&1000u32.to_be_bytes()[..], &[0x01; 10]].concat()),
            Reset(reset::MALFORMED),
        ),
        row(
            "quic: protobuf with a truncated varint",
            Input::QuicStream(quic_frame(0x01, &truncated_varint)),
            Reset(reset::MALFORMED),
        ),
        row(
            "quic: protobuf with a wrong wire type",
            Input::QuicStream(quic_frame(0x01, &wrong_wire_type)),
            Reset(reset::MALFORMED),
        ),
        row(
            "quic: unknown frame kind",
            Input::QuicStream(quic_frame(0x42, &[])),
            Reset(reset::MALFORMED),
        ),
    ]
}

async fn produce(connection: &Connection, topic: &str, partition: u32, batch: Bytes) -> ErrorCode {
    let request = Request::new(RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 5_000,
        batches: vec![PartitionBatch {
            topic: topic.into(),
            partition,
            batch,
        }],
    }));
    match connection.clone().oneshot(request).await.unwrap() {
        Response::Produce(r) => ErrorCode::from_wire(r.results[0].error_code),
        other => panic!("unexpected {other:?}"),
    }
}

/// Passes raw bytes through tonic as the body of a Produce call.
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn grpc_body(endpoint: &Endpoint, body: Vec<u8>) -> Expect {
    // The test agent serves gRPC in plaintext.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", endpoint.authority()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/streamhouse.v1.Agent/Produce");
    match grpc
        .unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(body), path, RawCodec)
        .await
    {
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Internal | tonic::Code::InvalidArgument
            ) =>
        {
            Expect::MalformedRpc
        }
        other => panic!("garbage body answered with {other:?}"),
    }
}

async fn quic_stream(quic: &QuicTransport, endpoint: &Endpoint, bytes: &[u8]) -> Expect {
    let (mut send, mut recv) = quic.open_raw_stream(endpoint).await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match read_frame(&mut recv, MAX_FRAME).await {
        Err(frame::FrameError::Io(io)) => match io
            .get_ref()
            .and_then(|e| e.downcast_ref::<quinn::ReadError>())
        {
            Some(quinn::ReadError::Reset(code)) => {
                Expect::Reset(u32::try_from(u64::from(*code)).unwrap())
            }
            other => panic!("unexpected read error {other:?}"),
        },
        other => panic!("garbage frame answered with {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_typed_error_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path()).topic("t", 1);
    config.max_batch_bytes = MAX_BATCH;
    config.max_record_bytes = MAX_RECORD;
    let agent = RunningAgent::start(config).await;
    let grpc = GrpcTransport::default().connect(&agent.grpc).await.unwrap();
    let quic = agent.quic_transport();

    // A good idempotent batch first, so that a later gap is a gap and an older epoch stale.
    assert_eq!(
        produce(&grpc, "t", 0, batch(2, 10, idempotent(0))).await,
        ErrorCode::None
    );
    assert_eq!(agent.agent.next_offset("t", 0), Some(2));

    let cases = cases();
    assert!(cases.len() >= 22, "{} rows", cases.len());
    let mut typed = 0;
    for (row, (name, input, expected)) in cases.iter().enumerate() {
        // Each row before this one appended one good record after its bad input.
        let appended = 2 + row as i64;
        let next_seq = 2 + row as i32;
        let got = match input {
            Input::Batch(topic, partition, bytes) => {
                Expect::Code(produce(&grpc, topic, *partition, bytes.clone()).await)
            }
            Input::GrpcBody(body) => grpc_body(&agent.grpc, body.clone()).await,
            Input::QuicStream(bytes) => quic_stream(&quic, &agent.quic, bytes).await,
        };
        assert_eq!(&got, expected, "{name}");
        assert_eq!(
            agent.agent.next_offset("t", 0),
            Some(appended),
            "{name}: something was appended"
        );
        // Still serving, over both transports: the next batch in sequence is appended.
        let good = batch(1, 10, idempotent(next_seq));
        let code = if next_seq % 2 == 0 {
            produce(&grpc, "t", 0, good).await
        } else {
            let connection = quic.connect(&agent.quic).await.unwrap();
            produce(&connection, "t", 0, good).await
        };
        assert_eq!(code, ErrorCode::None, "{name}: the agent stopped serving");
        typed += 1;
    }
    println!(
        "bad input: {typed}/{} rows got their typed error",
        cases.len()
    );
    agent.stop().await;
}
