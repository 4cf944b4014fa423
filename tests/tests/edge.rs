//! The edge on raw sockets: each hygiene rule with the status it promises, connection bounds,
//! slow clients, and TLS (HTTP/2 by ALPN, client certificates).

use std::time::Duration;

use bff_tests::{Stack, TestBff};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `request` as it is and returns what the server answers until it closes the connection
/// or `wait` passes, as text.
async fn exchange(bff: &TestBff, request: &[u8], wait: Duration) -> String {
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    conn.write_all(request).await.expect("write");
    read_for(&mut conn, wait).await
}

async fn read_for(conn: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn oversized_heads_are_431() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |_| {}).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: bff\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = exchange(&bff, big.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 431"), "{answer}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: bff\r\n{many}Connection: close\r\n\r\n");
    let answer = exchange(&bff, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 431"), "{answer}");
}

#[tokio::test]
async fn a_declared_oversized_body_is_413_before_it_is_read() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    // Ten megabytes declared, none sent: the answer cannot come from having read them.
    let request = "POST /v1/subscriptions HTTP/1.1\r\nHost: bff\r\nContent-Type: application/json\r\n\
                   Content-Length: 10000000\r\n\r\n";
    let answer = exchange(&bff, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn an_undeclared_oversized_body_ends_a_pass_through_call_with_413() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.body_limit_bytes = 1024;
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    // Chunked, so no length is declared: the limit is met while the body streams to the backend.
    let chunk = format!("{{\"query\": \"{}\"}}", "a".repeat(2000));
    let request = format!(
        "POST /api/catalog/search HTTP/1.1\r\nHost: bff\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let answer = exchange(&bff, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn ambiguous_framing_is_refused_or_cannot_smuggle() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    for framing in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Content-Length: five\r\n",
    ] {
        let request = format!(
            "POST /v1/subscriptions HTTP/1.1\r\nHost: bff\r\n{framing}Connection: close\r\n\r\nhello"
        );
        let answer = exchange(&bff, request.as_bytes(), WAIT).await;
        assert!(answer.starts_with("http/1.1 400"), "{framing}: {answer}");
    }
    // Content-Length beside Transfer-Encoding: the chunked coding wins and the connection is
    // closed after the answer (RFC 9112, 6.1), so what a front proxy might have read as a second
    // request hidden in the body is never served.
    let smuggle = "POST /v1/subscriptions HTTP/1.1\r\nHost: bff\r\nContent-Length: 4\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n";
    let answer = exchange(&bff, smuggle.as_bytes(), WAIT).await;
    assert_eq!(answer.matches("http/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
}

#[tokio::test]
async fn a_client_that_is_slow_to_send_its_head_is_cut_off() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.header_read_timeout_ms = 300;
    })
    .await;
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: bff\r\n")
        .await
        .expect("write");
    // The head never ends; the server closes the connection (with a 408 or without a word).
    let answer = read_for(&mut conn, WAIT).await;
    assert!(
        answer.is_empty() || answer.starts_with("http/1.1 408"),
        "{answer}"
    );
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed");
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_gets_408() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_partner::BFF, &stack, |c| {
        c.server.body_read_timeout_ms = 300;
    })
    .await;
    let key = stack.partner_key("acme").await;
    let request = format!(
        "POST /v1/subscriptions HTTP/1.1\r\nHost: bff\r\nX-Api-Key: {key}\r\nIdempotency-Key: slow-1\r\n\
         Content-Type: application/json\r\nContent-Length: 60\r\nConnection: close\r\n\r\n{{\"user_id\""
    );
    let answer = exchange(&bff, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // Through a pass-through route too, and without counting against the backend's breaker.
    let mobile = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.body_read_timeout_ms = 300;
        c.upstreams
            .get_mut("content")
            .expect("content")
            .breaker_failures = 1;
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let request = format!(
        "POST /api/catalog/search HTTP/1.1\r\nHost: bff\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 60\r\nConnection: close\r\n\r\n{{\"query\""
    );
    let answer = exchange(&mobile, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    let res = reqwest::Client::new()
        .get(format!("{}/api/catalog/items/item-018", mobile.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("after");
    assert_eq!(res.status(), StatusCode::OK, "the breaker stayed closed");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.max_connections = 2;
    })
    .await;
    let idle: Vec<TcpStream> =
        futures::future::join_all((0..2).map(|_| TcpStream::connect(bff.addr)))
            .await
            .into_iter()
            .map(|c| c.expect("connect"))
            .collect();
    // Give the server a moment to take both into their slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(bff.addr).await.expect("backlog");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bff\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let early = read_for(&mut third, Duration::from_millis(500)).await;
    assert!(early.is_empty(), "served past the cap: {early}");
    drop(idle);
    let answer = read_for(&mut third, WAIT).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
}

#[tokio::test]
async fn answers_say_nothing_about_what_serves_them() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |_| {}).await;
    for target in ["/healthz", "/api/v2/user/profile", "/nope"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: bff\r\nConnection: close\r\n\r\n");
        let answer = exchange(&bff, request.as_bytes(), WAIT).await;
        let head = answer.split("\r\n\r\n").next().unwrap_or_default();
        assert!(!head.contains("\r\nserver:"), "{target}: {head}");
        assert!(!head.contains("x-powered-by"), "{target}: {head}");
    }
}

/// A CA, and a certificate it signed for `names`, as PEM: (ca, cert, key).
fn issue(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn write(dir: &std::path::Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

#[tokio::test]
async fn tls_serves_http2_by_alpn_and_client_certificates_can_be_required() {
    let dir = std::env::temp_dir().join(format!("bff-edge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (server_ca, server_cert, server_key) = issue(&["localhost"]);
    let (client_ca, client_cert, client_key) = issue(&["acme-client"]);
    let (cert_file, key_file) = (
        write(&dir, "server.pem", &server_cert),
        write(&dir, "server.key", &server_key),
    );
    let client_ca_file = write(&dir, "client-ca.pem", &client_ca);

    let stack = Stack::start().await;
    let plain_tls = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.tls = Some(gateway_core::config::TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: None,
            client_cert_required: true,
        });
    })
    .await;
    let trust = reqwest::Certificate::from_pem(server_ca.as_bytes()).expect("ca");
    let client = |identity: Option<reqwest::Identity>, addr: std::net::SocketAddr| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(trust.clone())
            .resolve("localhost", addr);
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().expect("client")
    };
    let url = |addr: std::net::SocketAddr| format!("https://localhost:{}/healthz", addr.port());

    let res = client(None, plain_tls.addr)
        .get(url(plain_tls.addr))
        .send()
        .await
        .expect("https");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    // Plain HTTP to a TLS port is not served.
    let plain = reqwest::get(format!("http://{}/healthz", plain_tls.addr)).await;
    assert!(plain.is_err() || !plain.expect("answer").status().is_success());

    let mtls = TestBff::start(&bff_partner::BFF, &stack, |c| {
        c.server.tls = Some(gateway_core::config::TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: Some(client_ca_file.clone()),
            client_cert_required: true,
        });
    })
    .await;
    let without = client(None, mtls.addr).get(url(mtls.addr)).send().await;
    assert!(without.is_err(), "no client certificate, no connection");
    let identity =
        reqwest::Identity::from_pem(format!("{client_cert}{client_key}").as_bytes()).expect("id");
    let key = stack.partner_key("acme").await;
    let res = client(Some(identity), mtls.addr)
        .get(format!(
            "https://localhost:{}/v1/subscriptions",
            mtls.addr.port()
        ))
        .header("x-api-key", key)
        .send()
        .await
        .expect("mutual TLS");
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert!(body["data"].is_array());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_tls_files_are_named_at_start_up() {
    let mut cfg = (bff_mobile::BFF.defaults)();
    cfg.server.tls = Some(gateway_core::config::TlsConfig {
        cert_file: "/nonexistent/cert.pem".into(),
        key_file: "/nonexistent/key.pem".into(),
        client_ca_file: None,
        client_cert_required: true,
    });
    let err = cfg.validate().expect_err("missing files");
    assert!(err.0.contains("server.tls.cert_file"), "{}", err.0);
}

#[tokio::test]
async fn a_connection_that_never_begins_a_request_is_closed() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.header_read_timeout_ms = 300;
    })
    .await;
    // Nothing at all, and the beginning of HTTP/2's preface: neither shows a protocol, and
    // neither may hold its place under the connection cap for as long as the client likes.
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
        conn.write_all(opening).await.expect("write");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, conn.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "{}: still open after {WAIT:?}",
            String::from_utf8_lossy(opening)
        );
    }
}

#[tokio::test]
async fn a_protocols_opening_may_arrive_in_pieces() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |_| {}).await;
    let pause = Duration::from_millis(50);

    // HTTP/1.1, its first byte alone.
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    conn.write_all(b"G").await.expect("write");
    tokio::time::sleep(pause).await;
    conn.write_all(b"ET /healthz HTTP/1.1\r\nHost: bff\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_for(&mut conn, WAIT).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");

    // HTTP/2 with prior knowledge, its preface in two writes, then an empty SETTINGS frame: the
    // server answers with a SETTINGS frame of its own (type 4, the frame header's fourth byte).
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    conn.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    tokio::time::sleep(pause).await;
    conn.write_all(b"\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let mut frame = [0u8; 9];
    tokio::time::timeout(WAIT, conn.read_exact(&mut frame))
        .await
        .expect("an answer in time")
        .expect("a frame header");
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.header_read_timeout_ms = 300;
    })
    .await;
    // HTTP/1.1: one request answered, then nothing; the header timeout runs for the next head.
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(WAIT, conn.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "HTTP/1.1: still open after {WAIT:?}");
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");

    // HTTP/2's preface and an empty SETTINGS frame, then nothing: a connection without a request
    // in flight holds its place under the connection cap no longer than an idle HTTP/1.1 one.
    // The client acknowledges nothing (not the server's SETTINGS, nor a PING): the server may not
    // wait on it to close.
    silent_http2_goes_away(&bff).await;
}

/// Opens a raw HTTP/2 connection (the preface and an empty SETTINGS frame) and sends nothing
/// more: the server must close it within [`WAIT`], its last frames including a GOAWAY (type 7),
/// so that a client knows which requests were served.
async fn silent_http2_goes_away(bff: &TestBff) {
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let (types, closed) = h2_frames_until_closed(&mut conn).await;
    assert!(closed, "HTTP/2: still open after {WAIT:?}");
    assert!(types.contains(&7), "frame types {types:?}");
}

/// Reads frames from a raw HTTP/2 connection until the server closes it or [`WAIT`] passes: the
/// frame types seen, and whether it closed.
async fn h2_frames_until_closed(conn: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(WAIT, conn.read_to_end(&mut frames))
        .await
        .is_ok();
    let mut at = 0;
    let mut types = Vec::new();
    while at + 9 <= frames.len() {
        let len = usize::from(frames[at]) << 16
            | usize::from(frames[at + 1]) << 8
            | usize::from(frames[at + 2]);
        types.push(frames[at + 3]);
        at += 9 + len;
    }
    (types, closed)
}

#[tokio::test]
async fn an_http2_connection_whose_answer_still_streams_is_not_idle() {
    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |c| {
        c.server.header_read_timeout_ms = 300;
        c.client.events_heartbeat_secs = 1;
    })
    .await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let token = stack.user_token("user-0042", "events:read").await;
    let mut res = http
        .get(format!("{}/api/events", web.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("events");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    // Two heartbeats a second apart: the stream outlives several header timeouts, its answer
    // open all along, and the connection is not closed under it.
    let mut text = String::new();
    let streamed = tokio::time::timeout(WAIT, async {
        while text.matches(": heartbeat").count() < 2 {
            match res.chunk().await {
                Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(())
    })
    .await
    .expect("two heartbeats in time");
    assert!(
        streamed.is_ok(),
        "the stream ended: {streamed:?} after {text}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_is_cut_off() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.send_timeout_ms = 300;
    })
    .await;
    // About 24 MB of answers: more than the sockets' buffers hold.
    const ASKED: usize = 100_000;
    // A small receive window, then many requests in one go and nothing read: the
    // answers fill both sides' buffers and the gateway's writes wait on the client.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut conn = socket.connect(bff.addr).await.expect("connect");
    let requests = "GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n".repeat(ASKED);
    // The gateway reads requests only as fast as it can answer them: write what it takes.
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.write_all(requests.as_bytes())).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reading now drains what was sent before the cut, then ends: the connection is closed,
    // not waiting, its answers unfinished (an open one would answer them all, then wait
    // for the next request for the header timeout, longer than this test waits).
    let mut answers = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answers.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answered = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        ended.is_ok(),
        "still open after {WAIT:?}, {answered} answered, {} bytes",
        answers.len()
    );
    assert!(answered < ASKED, "all {answered} answered");
}

/// An HTTP/2 client that reads every frame (so the socket never stalls) but grants each stream
/// only `window` bytes, and none back as it reads them.
async fn stingy_http2(
    addr: std::net::SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client.ready().await.expect("ready"), conn)
}

/// Sends `request` and waits for its answer's head.
async fn h2_head(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    request: axum::http::Request<()>,
) -> axum::http::Response<h2::RecvStream> {
    let (answer, _) = client.send_request(request, true).expect("send");
    tokio::time::timeout(WAIT, answer)
        .await
        .expect("a head in time")
        .expect("a head")
}

/// Reads `body` until its stream is reset, which it must be within [`WAIT`]: then the reset's
/// error.
async fn reset_of(mut body: h2::RecvStream) -> h2::Error {
    let reset = tokio::time::timeout(WAIT, async {
        loop {
            match body.data().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Ok(err),
                None => return Err("the answer ended whole"),
            }
        }
    })
    .await
    .expect("the stream still open after the send timeout");
    reset.expect("a reset stream")
}

#[tokio::test]
async fn an_http2_answer_the_client_grants_no_window_for_is_reset() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.send_timeout_ms = 300;
    })
    .await;
    // No window at all: each answer can send its head and nothing of its body.
    let (mut client, conn) = stingy_http2(bff.addr, 0).await;
    let healthz = || {
        axum::http::Request::get(format!("{}/healthz", bff.url))
            .body(())
            .expect("request")
    };
    let answer = h2_head(&mut client, healthz()).await;
    assert_eq!(answer.status(), StatusCode::OK);
    // The body waits on the client's window for the send timeout, then its stream is reset.
    let err = reset_of(answer.into_body()).await;
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    assert!(err.is_reset() && !err.is_go_away(), "{err:?}");
    // That stream alone: the connection still serves requests.
    let mut client = client.ready().await.expect("the connection still open");
    let answer = h2_head(&mut client, healthz()).await;
    assert_eq!(answer.status(), StatusCode::OK);
    conn.abort();
}

#[tokio::test]
async fn an_http2_stream_the_client_stops_granting_window_for_is_reset() {
    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |c| {
        c.server.send_timeout_ms = 300;
        c.client.events_heartbeat_secs = 1;
    })
    .await;
    // An event stream, whose body waits on its backend between events, and a client that
    // takes 16 bytes of it and grants no more: the stream waits on the client from then on.
    let token = stack.user_token("user-0042", "events:read").await;
    let (mut client, conn) = stingy_http2(web.addr, 16).await;
    let events = axum::http::Request::get(format!("{}/api/events", web.url))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request");
    let answer = h2_head(&mut client, events).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let err = reset_of(answer.into_body()).await;
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    conn.abort();
}

/// The sum of `bff_connections_retired_total` for `reason` on the BFF's `/metrics` (every test
/// of this file shares one recorder: a lower bound for one test's own).
async fn retired(bff: &TestBff, reason: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", bff.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("bff_connections_retired_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_connection_carries_at_most_its_requests() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.server.max_requests_per_connection = 3;
    })
    .await;
    // HTTP/1.1, four requests pipelined: three answered, the third with `Connection: close`,
    // then the connection closed with the fourth unanswered (the header timeout, 10 s, would
    // keep it open past WAIT otherwise).
    let request = "GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n";
    let answers = exchange(&bff, request.repeat(4).as_bytes(), WAIT).await;
    assert_eq!(answers.matches("http/1.1 200").count(), 3, "{answers}");
    assert_eq!(answers.matches("connection: close").count(), 1, "{answers}");
    let last = answers.rfind("http/1.1 200").expect("an answer");
    assert!(answers[last..].contains("connection: close"), "{answers}");

    // One at a time, the same: the first two keep the connection, the third closes it.
    let mut conn = TcpStream::connect(bff.addr).await.expect("connect");
    for n in 1..=3 {
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut head = [0u8; 512];
        let read = tokio::time::timeout(WAIT, conn.read(&mut head))
            .await
            .expect("an answer in time")
            .expect("read");
        let head = String::from_utf8_lossy(&head[..read]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "answer {n}: {head}");
        assert_eq!(
            head.contains("connection: close"),
            n == 3,
            "answer {n}: {head}"
        );
    }
    let rest = read_for(&mut conn, WAIT).await;
    assert!(rest.is_empty(), "{rest}");

    // HTTP/2: three requests on one connection, then a GOAWAY and the connection closed (its
    // idle bound, one to two header timeouts, would keep it open past WAIT otherwise).
    let (mut client, h2_conn) = stingy_http2(bff.addr, 65_535).await;
    for n in 1..=3 {
        let healthz = axum::http::Request::get(format!("{}/healthz", bff.url))
            .body(())
            .expect("request");
        let answer = h2_head(&mut client, healthz).await;
        assert_eq!(answer.status(), StatusCode::OK, "answer {n}");
    }
    tokio::time::timeout(WAIT, h2_conn)
        .await
        .expect("the HTTP/2 connection closed after its third request")
        .expect("the connection's task");
    assert!(
        client.ready().await.is_err(),
        "the closed connection took a fourth request"
    );
    // Three connections ended at their cap, counted for operators.
    assert!(retired(&bff, "requests").await >= 3.0);
}

#[tokio::test]
async fn a_connection_past_its_age_is_closed() {
    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |c| {
        c.server.max_connection_age_ms = 300;
        c.server.shutdown_grace_ms = 1_000;
        c.client.events_heartbeat_secs = 1;
    })
    .await;
    // HTTP/1.1: answered, then closed at its age, well before the header timeout (10 s).
    let started = std::time::Instant::now();
    let answer = exchange(&web, b"GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n", WAIT).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    let lived = started.elapsed();
    assert!(lived < Duration::from_secs(3), "closed after {lived:?}");

    // HTTP/2: a GOAWAY at its age, then closed (the idle bound, one to two header timeouts,
    // would come after WAIT).
    silent_http2_goes_away(&web).await;

    // A request in flight when its connection reaches its age: the answer, ready after it, says
    // `Connection: close` (hyper writes it into an answer whose connection drains), and the
    // connection closes once it is sent, within the grace period.
    let token = stack
        .user_token("user-0042", "profile:read events:read")
        .await;
    stack.fault("user", 600, 0.0).await;
    let request =
        format!("GET /api/profile HTTP/1.1\r\nHost: bff\r\nAuthorization: Bearer {token}\r\n\r\n");
    let answer = exchange(&web, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    stack.reset().await;

    // An event stream on a connection past its age gets the grace period, then the connection
    // is closed under it: without the age it would go on for as long as the client reads.
    let mut events = TcpStream::connect(web.addr).await.expect("connect");
    let request =
        format!("GET /api/events HTTP/1.1\r\nHost: bff\r\nAuthorization: Bearer {token}\r\n\r\n");
    events.write_all(request.as_bytes()).await.expect("write");
    let mut streamed = Vec::new();
    let closed = tokio::time::timeout(WAIT, events.read_to_end(&mut streamed))
        .await
        .is_ok();
    let streamed = String::from_utf8_lossy(&streamed).to_lowercase();
    assert!(streamed.starts_with("http/1.1 200"), "{streamed}");
    assert!(
        streamed.contains("text/event-stream"),
        "not an event stream: {streamed}"
    );
    assert!(
        closed,
        "the event stream still open after {WAIT:?}: {streamed}"
    );
    // Four connections ended at their age, counted for operators.
    assert!(retired(&web, "age").await >= 4.0);
}
