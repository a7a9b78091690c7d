//! The doors under hostile or careless clients, as a real `cohort serve`
//! process over real gRPC and raw TCP: request metadata set by hand, queries
//! of many kilobytes, streams of many small frames, HTTP connections that
//! stall.

mod common;

use std::time::Duration;

use cohort::proto::v1 as pb;
use common::Server;
use serde_json::json;
use tonic::metadata::MetadataValue;

/// A request whose `grpc-timeout` is `timeout`, written as given.
fn with_timeout<T>(message: T, timeout: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("grpc-timeout", MetadataValue::try_from(timeout).unwrap());
    request
}

#[test]
fn grpc_timeouts_are_parsed_with_checked_arithmetic() {
    use cohort::server::grpc::parse_grpc_timeout;
    assert_eq!(parse_grpc_timeout("5S"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_grpc_timeout("99999999H"), Ok(Duration::from_secs(99_999_999 * 3600)));
    for bad in ["18446744073709551615S", "123456789n", "", "S", "5", "5s", "-5S", "5 S", "+5S", "1.5S"] {
        let e = parse_grpc_timeout(bad).unwrap_err();
        assert!(e.contains("is not a timeout"), "{bad:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_past_the_clock_is_invalid_argument_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    s.ingest(vec![json!({"type":"identify","userId":"u1","traits":{"plan":"pro"}}).to_string()])
        .await
        .unwrap();
    let mut q = pb::query_client::QueryClient::new(s.channel().await);
    let count = || pb::CountRequest {
        expressions: vec!["ALL".into()],
        now: String::new(),
        max_staleness_ms: 0,
        allow_partial: false,
    };
    for timeout in ["18446744073709551615S", "9999999999999H", "123456789S", "12x"] {
        let e = q.count(with_timeout(count(), timeout)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "count, {timeout}: {e:?}");
        assert!(e.message().contains("grpc-timeout"), "{}", e.message());

        let members = pb::MembersRequest { expression: "ALL".into(), ..Default::default() };
        let e = q.members(with_timeout(members, timeout)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "members, {timeout}: {e:?}");

        let breakdown = pb::BreakdownRequest {
            trait_name: "plan".into(),
            expression: "ALL".into(),
            ..Default::default()
        };
        let e = q.breakdown(with_timeout(breakdown, timeout)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "breakdown, {timeout}: {e:?}");
    }
    // The largest timeout gRPC can write is a deadline like any other.
    let r = q.count(with_timeout(count(), "99999999H")).await.unwrap().into_inner();
    assert_eq!(r.counts, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_timeout_grpc_cannot_carry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--addr", &format!("http://{}", s.grpc), "--timeout", "18446744073709551615", "count", "ALL"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
}

/// A query of about `chars` characters with a syntax error at its very end.
fn long_bad_query(chars: usize) -> String {
    let mut q = String::with_capacity(chars + 16);
    while q.len() < chars {
        q.push_str("country = \"FR\" OR ");
    }
    q.push_str("country = ");
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_bad_query_gets_a_short_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    s.ingest(vec![json!({"type":"identify","userId":"u1","traits":{"country":"FR"}}).to_string()])
        .await
        .unwrap();
    let mut q = pb::query_client::QueryClient::new(s.channel().await);
    for chars in [20_000, 4_600_000] {
        let text = long_bad_query(chars);
        let end = text.chars().count() + 1;
        let e = q
            .count(pb::CountRequest {
                expressions: vec![text.clone()],
                now: String::new(),
                max_staleness_ms: 0,
                allow_partial: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{chars} chars: {:?}", e.code());
        assert!(e.message().len() < 1000, "{chars} chars: a message of {} bytes", e.message().len());
        assert!(e.message().contains(&format!("position {end}")), "{}", e.message());
        assert!(e.message().contains(&format!("of {}", end - 1)), "{}", e.message());

        let e = q
            .check(pb::CheckRequest {
                profile: "u1".into(),
                expressions: vec![text.clone()],
                now: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().len() < 1000, "check: a message of {} bytes", e.message().len());

        // A name that long is unknown, and said briefly.
        let name = "x".repeat(chars);
        let e = q
            .count(pb::CountRequest {
                expressions: vec![format!("{name} = 1")],
                now: String::new(),
                max_staleness_ms: 0,
                allow_partial: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().len() < 1000, "unknown name: a message of {} bytes", e.message().len());
        assert!(e.message().contains("position 1"), "{}", e.message());
    }

    // A saved segment of 20 KB that does not parse is refused briefly; one
    // past the Segments service's message limit is refused cleanly.
    let mut segments = pb::segments_client::SegmentsClient::new(s.channel().await);
    let create = |expression: String| pb::CreateSegmentRequest {
        name: "long".into(),
        expression,
        description: String::new(),
    };
    let e = segments.create_segment(create(long_bad_query(20_000))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(e.message().len() < 1000, "create: a message of {} bytes", e.message().len());
    let e = segments.create_segment(create(long_bad_query(4_600_000))).await.unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{:?}: {}",
        e.code(),
        e.message()
    );
    // A query past the Query service's 64 MiB request limit is refused
    // cleanly too.
    let e = q
        .count(pb::CountRequest {
            expressions: vec![long_bad_query(65 << 20)],
            now: String::new(),
            max_staleness_ms: 0,
            allow_partial: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{:?}: {}",
        e.code(),
        e.message()
    );
    // And the node still answers.
    let r = q
        .count(pb::CountRequest {
            expressions: vec!["ALL".into()],
            now: String::new(),
            max_staleness_ms: 0,
            allow_partial: false,
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().counts, vec![1]);
}

/// One `track` message of user `k`.
fn track(k: usize) -> String {
    json!({"type":"track","userId":format!("s{k}"),"event":"e"}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_100k_one_message_batches_is_applied_in_full() {
    const FRAMES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    let mut c = pb::ingest_client::IngestClient::new(s.channel().await);
    // Through a channel of one: each batch is its own DATA frame (tonic's
    // client packs batches that are ready together into one frame).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for k in 0..FRAMES {
            if tx.send(pb::IngestBatchRequest { messages: vec![track(k)] }).await.is_err() {
                return;
            }
        }
    });
    let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
    let r =
        c.ingest_stream(batches).await.unwrap_or_else(|e| panic!("the stream was cut: {e:?}")).into_inner();
    assert_eq!((r.applied, r.duplicates, r.rejections.len()), (FRAMES as u64, 0, 0));
    assert_eq!(s.universe().await, FRAMES as u64);

    // Batches of every size in one stream, positions counted across it.
    let sizes = [0usize, 1, 7, 0, 3_000, 1, 25_000, 2];
    let mut next = FRAMES;
    let mut batches = Vec::new();
    for n in sizes {
        let mut messages: Vec<String> = (next..next + n).map(track).collect();
        next += n;
        if n == 7 {
            messages[3] = "not json".into();
        }
        batches.push(pb::IngestBatchRequest { messages });
    }
    let r = c.ingest_stream(tokio_stream::iter(batches)).await.unwrap().into_inner();
    let total: usize = sizes.iter().sum();
    assert_eq!(r.applied, total as u64 - 1);
    let positions: Vec<u64> = r.rejections.iter().map(|x| x.position).collect();
    assert_eq!(positions, vec![1 + 3]);
}

/// Frames written as given, and the reply decoded as an `IngestReply`: a
/// client that can send a frame that is not an `IngestBatchRequest`.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::IngestReply;
    type Encoder = RawEncoder;
    type Decoder =
        <tonic_prost::ProstCodec<pb::IngestBatchRequest, pb::IngestReply> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(
            &mut tonic_prost::ProstCodec::<pb::IngestBatchRequest, pb::IngestReply>::default(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_a_bad_frame_says_what_was_applied() {
    const GOOD: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    let mut frames: Vec<Vec<u8>> = (0..GOOD)
        .map(|k| prost::Message::encode_to_vec(&pb::IngestBatchRequest { messages: vec![track(k)] }))
        .collect();
    // Field 1 (`messages`, a string) holding bytes that are not UTF-8.
    frames.push(vec![0x0a, 0x02, 0xff, 0xfe]);
    frames.push(prost::Message::encode_to_vec(&pb::IngestBatchRequest { messages: vec![track(GOOD)] }));
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/cohort.v1.Ingest/IngestStream");
    let e = grpc
        .client_streaming(tonic::Request::new(tokio_stream::iter(frames)), path, RawCodec)
        .await
        .unwrap_err();
    assert!(e.message().contains(&format!("{GOOD} applied")), "{:?}: {}", e.code(), e.message());
    assert!(e.message().contains(&format!("position {GOOD}")), "{}", e.message());
    // What the reply says was applied was applied, and nothing after it.
    assert_eq!(s.universe().await, GOOD as u64);
}

/// Starts a server whose HTTP door has these timeouts (milliseconds, 0 off).
fn with_http_timeouts(dir: &std::path::Path, header_ms: u64, idle_ms: u64) -> Server {
    let config = dir.join("cohort.toml");
    std::fs::write(
        &config,
        format!("http_header_timeout_ms = {header_ms}\nhttp_idle_timeout_ms = {idle_ms}\n"),
    )
    .unwrap();
    Server::start(&dir.join("data"), 2, &["--config", config.to_str().unwrap()])
}

/// Reads `conn` until the server closes it (end of stream or a reset) and
/// returns what it sent; `None` if it was still open after `bound` (a
/// bound on the test, far above the timeouts under test).
fn read_until_closed(conn: &mut std::net::TcpStream, bound: Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < bound {
        conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(got),
        }
    }
    None
}

const STILL_OPEN_BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_cut_at_the_header_timeout() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // The idle timeout is off: what closes these is the header timeout.
    let s = with_http_timeouts(dir.path(), 300, 0);
    let mut half = std::net::TcpStream::connect(&s.http).unwrap();
    half.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: cohort\r\nContent-Type: appl").unwrap();
    let mut silent = std::net::TcpStream::connect(&s.http).unwrap();
    // And 300 more, each with a header that stops part way.
    let mut slow: Vec<std::net::TcpStream> = (0..300)
        .map(|k| {
            let mut c = std::net::TcpStream::connect(&s.http).unwrap();
            c.write_all(format!("POST /v1/track HTTP/1.1\r\nHost: cohort\r\nX-Slow-{k}: ").as_bytes())
                .unwrap();
            c
        })
        .collect();
    assert!(read_until_closed(&mut half, STILL_OPEN_BOUND).is_some(), "half a header: still open");
    assert!(read_until_closed(&mut silent, STILL_OPEN_BOUND).is_some(), "nothing sent: still open");
    for (k, c) in slow.iter_mut().enumerate() {
        assert!(read_until_closed(c, STILL_OPEN_BOUND).is_some(), "slow connection {k}: still open");
    }
    // A whole request is answered as before.
    let mut whole = std::net::TcpStream::connect(&s.http).unwrap();
    whole.write_all(b"GET /health HTTP/1.1\r\nHost: cohort\r\nConnection: close\r\n\r\n").unwrap();
    let reply = read_until_closed(&mut whole, STILL_OPEN_BOUND).unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_and_an_idle_connection_are_cut_at_the_idle_timeout() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // The header timeout is off: what closes these is the idle timeout.
    let s = with_http_timeouts(dir.path(), 0, 300);
    // A body that stops arriving, 10 of its 100 bytes sent.
    let mut stalled = std::net::TcpStream::connect(&s.http).unwrap();
    stalled
        .write_all(b"POST /v1/batch HTTP/1.1\r\nHost: cohort\r\nContent-Length: 100\r\n\r\n{\"batch\":[")
        .unwrap();
    // A keep-alive connection left idle after its answer.
    let mut idle = std::net::TcpStream::connect(&s.http).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: cohort\r\n\r\n").unwrap();
    let mut silent = std::net::TcpStream::connect(&s.http).unwrap();
    assert!(read_until_closed(&mut stalled, STILL_OPEN_BOUND).is_some(), "stalled body: still open");
    let reply = read_until_closed(&mut idle, STILL_OPEN_BOUND).expect("idle keep-alive: still open");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
    assert!(read_until_closed(&mut silent, STILL_OPEN_BOUND).is_some(), "nothing sent: still open");
    // Nothing of the stalled batch reached the node.
    assert_eq!(s.universe().await, 0);
}
