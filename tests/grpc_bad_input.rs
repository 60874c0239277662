//! Bad input to the reference agent over gRPC: each case gets its typed error, nothing is
//! appended, and the agent keeps serving.

mod support;

use bytes::{Buf, BufMut, Bytes};
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::{CodecId, NoCompression};
use streamhouse::proto::v1::{Acks, ErrorCode, PartitionBatch, ProduceRequest};
use streamhouse::transport::{Connection, Request, RequestMessage, Response, Transport};
use streamhouse_agent::AgentConfig;
use streamhouse_grpc::GrpcTransport;
use support::agent::RunningAgent;
use support::{forge, reseal};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tower::ServiceExt;

fn batch(records: usize, value_len: usize, stamp: ProducerStamp) -> Bytes {
    let mut b = BatchBuilder::new();
    for _ in 0..records {
        b.append(1_700_000_000_000, None, Some(&vec![b'v'; value_len]), &[])
            .unwrap();
    }
    b.finish(stamp, &NoCompression).unwrap()
}

fn idempotent(seq: i32) -> ProducerStamp {
    ProducerStamp {
        producer_id: 4242,
        producer_epoch: 0,
        base_sequence: seq,
    }
}

async fn produce(connection: &Connection, topic: &str, batch: Bytes) -> ErrorCode {
    let request = Request::new(RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 5_000,
        batches: vec![PartitionBatch {
            topic: topic.into(),
            partition: 0,
            batch,
        }],
    }));
    match connection.clone().oneshot(request).await.unwrap() {
        Response::Produce(r) => ErrorCode::from_wire(r.results[0].error_code),
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends raw bytes as the body of a Produce call.
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

async fn raw_produce(endpoint: &str, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/streamhouse.v1.Agent/Produce");
    grpc.unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(body), path, RawCodec)
        .await
        .expect_err("garbage must not be accepted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path()).topic("t", 1);
    config.max_batch_bytes = 64 * 1024;
    config.max_record_bytes = 4 * 1024;
    let agent = RunningAgent::start(config).await;
    let connection = GrpcTransport::default().connect(&agent.grpc).await.unwrap();

    // One good idempotent batch first, so a later gap is a gap.
    assert_eq!(
        produce(&connection, "t", batch(2, 10, idempotent(0))).await,
        ErrorCode::None
    );
    let appended = agent.agent.next_offset("t", 0).unwrap();
    assert_eq!(appended, 2);

    let mut bad_crc = batch(3, 10, ProducerStamp::NONE).to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    let mut truncated = batch(3, 10, ProducerStamp::NONE);
    truncated.truncate(truncated.len() - 5);
    let mut wrong_magic = batch(1, 10, ProducerStamp::NONE).to_vec();
    wrong_magic[12] = 2;
    let cases: Vec<(&str, &str, Bytes, ErrorCode)> = vec![
        (
            "crc mismatch",
            "t",
            Bytes::from(bad_crc),
            ErrorCode::CorruptBatch,
        ),
        ("truncated batch", "t", truncated, ErrorCode::CorruptBatch),
        (
            "wrong magic",
            "t",
            reseal(wrong_magic),
            ErrorCode::CorruptBatch,
        ),
        (
            "unknown codec id",
            "t",
            forge(CodecId::new(6).unwrap(), 1, b"whatever"),
            ErrorCode::UnsupportedCodec,
        ),
        (
            "oversized batch",
            "t",
            batch(40, 2_000, ProducerStamp::NONE),
            ErrorCode::BatchTooLarge,
        ),
        (
            "oversized record",
            "t",
            batch(1, 5_000, ProducerStamp::NONE),
            ErrorCode::RecordTooLarge,
        ),
        (
            "empty batch",
            "t",
            batch(0, 0, ProducerStamp::NONE),
            ErrorCode::InvalidRequest,
        ),
        (
            "unknown topic",
            "missing",
            batch(1, 10, ProducerStamp::NONE),
            ErrorCode::UnknownTopic,
        ),
        (
            "invalid topic a/b",
            "a/b",
            batch(1, 10, ProducerStamp::NONE),
            ErrorCode::InvalidTopic,
        ),
        (
            "invalid topic ..",
            "..",
            batch(1, 10, ProducerStamp::NONE),
            ErrorCode::InvalidTopic,
        ),
        (
            "invalid topic empty",
            "",
            batch(1, 10, ProducerStamp::NONE),
            ErrorCode::InvalidTopic,
        ),
        (
            "sequence gap",
            "t",
            batch(1, 10, idempotent(5)),
            ErrorCode::OutOfOrderSequence,
        ),
        (
            "stale epoch",
            "t",
            batch(
                1,
                10,
                ProducerStamp {
                    producer_epoch: -1,
                    ..idempotent(2)
                },
            ),
            ErrorCode::InvalidProducerEpoch,
        ),
    ];
    for (name, topic, bytes, expected) in cases {
        assert_eq!(produce(&connection, topic, bytes).await, expected, "{name}");
        assert_eq!(
            agent.agent.next_offset("t", 0),
            Some(appended),
            "{name} appended something"
        );
    }

    // Not protobuf at all, and protobuf with a truncated varint: the RPC fails, typed by gRPC.
    for body in [b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![0x1a, 0xff, 0xff]] {
        let status = raw_produce(agent.grpc.as_str(), body).await;
        assert!(
            matches!(
                status.code(),
                tonic::Code::Internal | tonic::Code::InvalidArgument
            ),
            "{status:?}"
        );
    }

    // Still serving: the next batch in sequence is appended.
    assert_eq!(
        produce(&connection, "t", batch(1, 10, idempotent(2))).await,
        ErrorCode::None
    );
    assert_eq!(agent.agent.next_offset("t", 0), Some(appended + 1));
    agent.stop().await;
}
