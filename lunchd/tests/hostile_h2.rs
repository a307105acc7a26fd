//! HTTP/2 attacks driven frame by frame over TLS with ALPN `h2`: rapid
//! reset (CVE-2023-44487) and CONTINUATION floods (CVE-2024-27316 and
//! kin). The attacking connection is torn down; the server keeps serving.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Served, tls_stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use lunch_testkit::h2::{
    ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, RST_STREAM, SETTINGS, frame,
    literal,
};

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

/// `GET https://localhost/healthz` as an HPACK block.
fn get_healthz() -> Vec<u8> {
    lunch_testkit::h2::get("/healthz", "localhost")
}

/// What the server sent on an attacking connection.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    headers: usize,
    closed: bool,
}

/// Reads frames until GOAWAY, end of stream, or 20 s.
async fn read_frames(reader: &mut (impl AsyncRead + Unpin)) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, reader.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Err(_) => return seen,
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if !matches!(
            tokio::time::timeout_at(deadline, reader.read_exact(&mut payload)).await,
            Ok(Ok(_))
        ) {
            seen.closed = true;
            return seen;
        }
        match head[3] {
            HEADERS => seen.headers += 1,
            GOAWAY if payload.len() >= 8 => {
                seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                return seen;
            }
            _ => {}
        }
    }
}

/// Opens an h2 connection and exchanges settings.
async fn h2(served: &Served) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = tls_stream(served.https(), served.ca.client_config(&[b"h2"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
        .await
        .unwrap();
    // The server's SETTINGS come first; acknowledge them.
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], SETTINGS);
    let len = (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.unwrap();
    tls.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway() {
    let served = Served::start("", "").await;
    let mut tls = h2(&served).await;

    // A stream answered normally first: the hand-made frames are right.
    tls.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_healthz()))
        .await
        .unwrap();
    let mut head = [0u8; 9];
    loop {
        tls.read_exact(&mut head).await.unwrap();
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await.unwrap();
        if head[3] == HEADERS {
            // :status 200 is index 8 of the static table.
            assert_eq!(payload.first(), Some(&0x88), "{payload:?}");
            break;
        }
    }

    // Then thousands of requests, each cancelled as soon as it is sent.
    let (mut reader, mut writer) = tokio::io::split(tls);
    let attack = tokio::spawn(async move {
        let block = get_healthz();
        for batch in 0..50u32 {
            let mut bytes = Vec::new();
            for i in 0..100u32 {
                let stream = 3 + 2 * (batch * 100 + i);
                bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
                bytes.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
            }
            if writer.write_all(&bytes).await.is_err() {
                return batch;
            }
        }
        50
    });
    let seen = read_frames(&mut reader).await;
    let batches = attack.await.unwrap();
    eprintln!("rapid reset: {seen:?} after {batches} batches of 100");
    // hyper's max_pending_accept_reset_streams: ENHANCE_YOUR_CALM (0xb).
    assert_eq!(
        seen.goaway,
        Some(0xb),
        "{seen:?} after {batches} batches of 100\n{}",
        served.lunchd.log()
    );
    assert!(seen.headers < 5000, "{seen:?}");
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let served = Served::start("", "").await;
    let tls = h2(&served).await;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let attack = tokio::spawn(async move {
        // A HEADERS frame that never ends, followed by CONTINUATION frames
        // of 1 KiB header fields: 16 MiB in all if nothing stops it.
        let mut start = get_healthz();
        literal("x-first", "a", &mut start);
        if writer.write_all(&frame(HEADERS, END_STREAM, 1, &start)).await.is_err() {
            return;
        }
        let mut block = Vec::new();
        literal("x-flood", &"a".repeat(1000), &mut block);
        let batch = frame(CONTINUATION, 0, 1, &block).repeat(16);
        for _ in 0..1024 {
            if writer.write_all(&batch).await.is_err() {
                return;
            }
            counter.fetch_add(16, Ordering::Relaxed);
        }
    });
    let seen = read_frames(&mut reader).await;
    attack.abort();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("CONTINUATION flood: {seen:?} after {sent} frames");
    assert!(
        seen.goaway.is_some() || seen.closed,
        "the connection survived {sent} CONTINUATION frames: {seen:?}"
    );
    assert_eq!(seen.headers, 0, "{seen:?}");
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_that_answers_pings_is_closed() {
    // Longer than the 30 s between PINGs that HTTP/2 servers commonly send
    // to idle connections: an answered PING must not count as activity.
    let served = Served::start("idle_timeout = 31", "").await;
    let mut tls = h2(&served).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(55);
    let mut pings = 0;
    let ended = loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, tls.read_exact(&mut head)).await {
            Err(_) => break false,
            Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if tls.read_exact(&mut payload).await.is_err() {
            break true;
        }
        match head[3] {
            GOAWAY => break true,
            // Answered, as browsers do.
            PING if head[4] & ACK == 0 => {
                pings += 1;
                let _ = tls.write_all(&frame(PING, ACK, 0, &payload)).await;
            }
            _ => {}
        }
    };
    assert!(ended, "an idle HTTP/2 connection stayed open ({pings} PINGs answered)");
    served.assert_healthy().await;
}

/// Reads frames for `wanted` or 20 s, returning `(type, stream, payload)` of
/// each; stops early at GOAWAY or end of stream.
async fn frames_until(
    reader: &mut (impl AsyncRead + Unpin),
    mut wanted: impl FnMut(&[(u8, u32, Vec<u8>)]) -> bool,
) -> Vec<(u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !wanted(&frames) {
        let mut head = [0u8; 9];
        if !matches!(
            tokio::time::timeout_at(deadline, reader.read_exact(&mut head)).await,
            Ok(Ok(_))
        ) {
            break;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if !matches!(
            tokio::time::timeout_at(deadline, reader.read_exact(&mut payload)).await,
            Ok(Ok(_))
        ) {
            break;
        }
        let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let kind = head[3];
        frames.push((kind, stream, payload));
        if kind == GOAWAY {
            break;
        }
    }
    frames
}

fn refused(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> bool {
    frames
        .iter()
        .any(|(kind, s, payload)| *kind == RST_STREAM && *s == stream && payload[..] == REFUSED_STREAM.to_be_bytes())
}

fn answered_ok(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> bool {
    frames
        .iter()
        .any(|(kind, s, payload)| *kind == HEADERS && *s == stream && payload.first() == Some(&0x88))
}

/// `GET /healthz` on `stream` with `kib` KiB of extra headers, in
/// HEADERS and CONTINUATION frames of the default maximum frame size.
fn oversized_request(stream: u32, kib: usize) -> Vec<u8> {
    let mut block = get_healthz();
    for i in 0..kib {
        literal(&format!("x-big-{i}"), &"a".repeat(1000), &mut block);
    }
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
        match i {
            0 => bytes.extend(frame(HEADERS, END_STREAM | last, stream, chunk)),
            _ => bytes.extend(frame(CONTINUATION, last, stream, chunk)),
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_gets_431_and_is_never_refused() {
    let served = Served::start("", "").await;
    // Over the 16 KiB limit by a little, and a 100 KB header list as a
    // cookie gone wrong makes one.
    for kib in [20, 100] {
        let mut tls = h2(&served).await;
        let mut bytes = oversized_request(1, kib);
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &get_healthz()));
        tls.write_all(&bytes).await.unwrap();
        // The 431's body says why; REFUSED_STREAM would tell the client to
        // retry the same request.
        let explained = |f: &[(u8, u32, Vec<u8>)]| {
            f.iter().any(|(kind, s, p)| {
                *kind == DATA && *s == 1 && String::from_utf8_lossy(p).contains("request headers too large")
            })
        };
        let frames = frames_until(&mut tls, |f| explained(f) && answered_ok(f, 3)).await;
        assert!(explained(&frames), "{kib} KiB: {frames:?}");
        assert!(!refused(&frames, 1), "{kib} KiB: {frames:?}");
        assert!(!answered_ok(&frames, 1), "{kib} KiB: {frames:?}");
        assert!(frames.iter().all(|(kind, ..)| *kind != GOAWAY), "{kib} KiB: {frames:?}");
        assert!(answered_ok(&frames, 3), "{kib} KiB: {frames:?}");
    }
    // A real client gets the status, and its connection goes on.
    let mut tls = served.connect(&[b"h2"]).await;
    let big = "a".repeat(100_000);
    let response = tls
        .request(hyper::Method::GET, "localhost", "/healthz", &[("cookie", &big)])
        .await;
    assert_eq!(response.status, 431, "{}", response.body);
    assert_eq!(response.headers["content-type"], "application/json");
    assert_eq!(
        response.body,
        "{\"error\":\"request headers too large; send at most 16384 bytes of headers\"}\n"
    );
    assert_eq!(tls.get("localhost", "/healthz").await.status, 200);
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_refused_on_its_stream() {
    let served = Served::start("", "").await;
    let mut tls = h2(&served).await;
    // 20 KiB of headers (the limit is 16 KiB).
    let mut bytes = oversized_request(1, 20);
    // Then a normal request on the same connection.
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &get_healthz()));
    tls.write_all(&bytes).await.unwrap();
    // h2 answers 431 on the stream (not 200), and the connection goes on.
    let refused_or_431 = |f: &[(u8, u32, Vec<u8>)]| {
        refused(f, 1)
            || f.iter()
                .any(|(kind, s, p)| *kind == HEADERS && *s == 1 && p.first() != Some(&0x88))
    };
    let frames = frames_until(&mut tls, |f| refused_or_431(f) && answered_ok(f, 3)).await;
    assert!(refused_or_431(&frames), "{frames:?}");
    assert!(!answered_ok(&frames, 1), "{frames:?}");
    assert!(answered_ok(&frames, 3), "{frames:?}");
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_max_streams_are_refused() {
    let served = Served::start("max_streams = 10", "").await;
    let mut tls = h2(&served).await;
    // Twenty requests whose bodies never come: each stream stays open.
    let mut bytes = Vec::new();
    for i in 0..20u32 {
        bytes.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &get_healthz()));
    }
    tls.write_all(&bytes).await.unwrap();
    let refusals = |f: &[(u8, u32, Vec<u8>)]| (0..20u32).filter(|i| refused(f, 1 + 2 * i)).count();
    let frames = frames_until(&mut tls, |f| refusals(f) >= 10).await;
    assert_eq!(refusals(&frames), 10, "{frames:?}");
    assert!((0..10u32).all(|i| !refused(&frames, 1 + 2 * i)), "{frames:?}");
    // Ending the open streams gets them answered and frees them for new ones.
    let mut bytes = Vec::new();
    for i in 0..10u32 {
        bytes.extend(frame(DATA, END_STREAM, 1 + 2 * i, &[]));
    }
    tls.write_all(&bytes).await.unwrap();
    let all_answered = |f: &[(u8, u32, Vec<u8>)]| (0..10u32).all(|i| answered_ok(f, 1 + 2 * i));
    let mut frames = frames
        .into_iter()
        .filter(|(kind, ..)| *kind == HEADERS)
        .collect::<Vec<_>>();
    frames.extend(frames_until(&mut tls, |f| all_answered(&[&frames[..], f].concat())).await);
    assert!(all_answered(&frames), "{frames:?}");
    tls.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 41, &get_healthz()))
        .await
        .unwrap();
    let frames = frames_until(&mut tls, |f| answered_ok(f, 41)).await;
    assert!(answered_ok(&frames, 41), "{frames:?}");
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off() {
    let served = Served::start("idle_timeout = 3", "").await;
    let mut tls = h2(&served).await;
    let sending = tokio::spawn(async move {
        // Ten requests, then PINGs, each to be answered, until the server
        // gives up on it; never a read. (More requests would pile up over
        // max_streams, be refused, and end the connection as a flood.)
        let mut bytes = Vec::new();
        for i in 0..10u32 {
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &get_healthz()));
        }
        let mut pings = 0u64;
        loop {
            for _ in 0..1000 {
                bytes.extend(frame(PING, 0, 0, &pings.to_be_bytes()));
                pings += 1;
            }
            if tls.write_all(&bytes).await.is_err() {
                return pings;
            }
            bytes.clear();
        }
    });
    served.assert_healthy().await;
    let pings = tokio::time::timeout(Duration::from_secs(120), sending)
        .await
        .expect("an HTTP/2 client that never reads was not cut off")
        .unwrap();
    eprintln!("slow reader: cut off after {pings} PINGs");
    served.assert_healthy().await;
}
