//! Hostile bytes against both ports of the real binary: garbage, protocol
//! confusion, oversized and malformed requests, request smuggling shapes,
//! Host header attacks on the redirect, and escapes from the ACME webroot.
//! Every attack gets a bounded answer, and the server keeps serving.

mod support;

use support::{Served, exchange, exchange_on, exchange_one, status_of, tls_stream};

/// Deterministic noise.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_the_wrong_protocol_get_closed() {
    let served = Served::start("", "").await;
    let (http, https) = (served.http(), served.https());

    // Noise on the HTTP port: a 400 or a plain close, never a hang.
    for seed in 1..=8 {
        let (response, closed) = exchange(http, &garbage(seed, 2048), false).await;
        assert!(closed, "noise {seed} left the connection open: {response:?}");
        assert!(response.is_empty() || status_of(&response) == Some(400), "{response}");
    }
    // A TLS ClientHello on the HTTP port.
    let hello = support::client_hello(served.ca.client_config(&[b"h2"]));
    let (response, closed) = exchange(http, &hello, false).await;
    assert!(
        closed && (response.is_empty() || status_of(&response) == Some(400)),
        "{response:?}"
    );
    // The HTTP/2 preface on the HTTP/1-only port.
    let (response, closed) = exchange(http, H2_PREFACE, false).await;
    assert!(
        closed && (response.is_empty() || status_of(&response) == Some(400)),
        "{response:?}"
    );

    // Plain HTTP on the HTTPS port gets a readable answer.
    let (response, closed) = exchange(https, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", false).await;
    assert!(closed, "{response}");
    assert_eq!(status_of(&response), Some(400), "{response}");
    assert!(response.contains("use an https:// address"), "{response}");
    // Noise that does not look like TLS is treated the same way.
    let (response, _) = exchange(https, &garbage(99, 512), false).await;
    assert!(response.is_empty() || status_of(&response) == Some(400), "{response:?}");
    // A truncated handshake record, then end of stream.
    let (response, closed) = exchange(https, &hello[..hello.len() / 2], true).await;
    assert!(closed && !response.starts_with("HTTP/"), "{response:?}");
    // A handshake record header announcing 16 KiB, followed by noise.
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend(garbage(7, 16 * 1024));
    let (response, closed) = exchange(https, &record, false).await;
    assert!(closed && !response.starts_with("HTTP/"), "{response:?}");
    // The HTTP/2 preface inside TLS after agreeing on HTTP/1.1.
    let tls = tls_stream(https, served.ca.client_config(&[b"http/1.1"])).await;
    let (response, closed) = exchange_on(tls, H2_PREFACE, false).await;
    assert!(
        closed && (response.is_empty() || status_of(&response) == Some(400)),
        "{response:?}"
    );

    served.assert_healthy().await;
}

/// The same request on the HTTP port and over TLS with HTTP/1.1.
async fn both_ports(served: &Served, request: &[u8]) -> [(String, bool); 2] {
    let plain = exchange(served.http(), request, false).await;
    let tls = tls_stream(served.https(), served.ca.client_config(&[b"http/1.1"])).await;
    [plain, exchange_on(tls, request, false).await]
}

fn assert_status(responses: &[(String, bool); 2], expected: &[u16], what: &str) {
    for (port, (response, _)) in ["http", "https"].iter().zip(responses) {
        let status = status_of(response);
        assert!(
            status.is_some_and(|s| expected.contains(&s)),
            "{what} on {port}: expected {expected:?}, got {response:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_4xx() {
    let served = Served::start("", "").await;

    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_status(
        &both_ports(&served, big_header.as_bytes()).await,
        &[431],
        "a 20 KB header",
    );

    // hyper reads the request line into the same bounded buffer as the
    // headers, so a huge URI is refused as too large a head (431), not 414.
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(20_000));
    assert_status(
        &both_ports(&served, huge_uri.as_bytes()).await,
        &[414, 431],
        "a 20 KB URI",
    );

    let mut many = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_status(&both_ports(&served, many.as_bytes()).await, &[431], "100 headers");

    for (what, request) in [
        (
            "invalid UTF-8 in the path",
            &b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ),
        ("a NUL in the path", b"GET /\0 HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        (
            "a NUL in a header",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "a NUL in a header name",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX\0A: b\r\n\r\n",
        ),
        (
            "a bare CR in a header",
            b"GET / HTTP/1.1\r\nHost: localhost\rX-A: b\r\n\r\n",
        ),
        ("no version", b"GET /\r\n\r\n"),
        ("HTTP/9", b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n"),
        (
            "a space in the header name",
            b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n",
        ),
        (
            "an obsolete folded header",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n",
        ),
    ] {
        assert_status(&both_ports(&served, request).await, &[400], what);
    }
    // A Host that is not UTF-8 cannot be redirected to.
    let (response, _) = exchange(served.http(), b"GET / HTTP/1.1\r\nHost: lunch\xff.test\r\n\r\n", false).await;
    assert_eq!(status_of(&response), Some(400), "{response}");
    // The TLS server answers such a request from its own router.
    let tls = tls_stream(served.https(), served.ca.client_config(&[b"http/1.1"])).await;
    let (response, _) = exchange_on(
        tls,
        b"GET /healthz HTTP/1.1\r\nHost: \xff\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(status_of(&response).is_some_and(|s| s < 500), "{response}");

    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_are_refused() {
    // Connections that stay open for another request close within a second.
    let served = Served::start("header_timeout = 1", "").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: lunch.test\r\n\r\n";
    for (what, head, expected) in [
        (
            "Content-Length and Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            [308, 405],
        ),
        (
            "Transfer-Encoding and Content-Length",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            [308, 405],
        ),
        (
            "two different Content-Lengths",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n",
            [400, 400],
        ),
        (
            "a Content-Length list",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nContent-Length: 5, 50\r\n\r\n",
            [400, 400],
        ),
        (
            "an unknown transfer coding",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nTransfer-Encoding: xchunked\r\n\r\n",
            [400, 400],
        ),
        (
            "chunked not last",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            [400, 400],
        ),
        (
            "a negative Content-Length",
            "POST / HTTP/1.1\r\nHost: lunch.test\r\nContent-Length: -5\r\n\r\n",
            [400, 400],
        ),
    ] {
        let request = format!("{head}0\r\n\r\n{smuggled}");
        for ((port, expected), (response, closed)) in ["http", "https"]
            .into_iter()
            .zip(expected)
            .zip(both_ports(&served, request.as_bytes()).await)
        {
            // Refused, or (both Content-Length and Transfer-Encoding) read
            // as chunked, answered once and closed, as RFC 9112 section 6.1
            // asks: the bytes after the body are never read as a request.
            let answers = response.matches("HTTP/1.1 ").count();
            assert!(closed, "{what} on {port}: left open: {response}");
            assert_eq!(answers, 1, "{what} on {port}: {response}");
            assert_eq!(status_of(&response), Some(expected), "{what} on {port}: {response}");
            assert!(
                !response.contains("/smuggled"),
                "{what} on {port}: smuggled: {response}"
            );
        }
    }
    served.assert_healthy().await;
}

/// Every `Location` in `response`.
fn locations(response: &str) -> Vec<&str> {
    response
        .split("\r\n")
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location").then(|| value.trim())
        })
        .collect()
}

/// Host values and request targets an attacker controls.
fn hostile_requests() -> Vec<Vec<u8>> {
    let hosts: Vec<Vec<u8>> = vec![
        b"evil.com".to_vec(),
        b"evil.com:80".to_vec(),
        b"lunch.test@evil.com".to_vec(),
        b"evil.com@lunch.test".to_vec(),
        b"user:pass@lunch.test".to_vec(),
        b"lunch.test.evil.com".to_vec(),
        b"lunch.test/evil.com".to_vec(),
        b"lunch.test\\evil.com".to_vec(),
        b"lunch.test:443@evil.com".to_vec(),
        b"lunch.test:99999".to_vec(),
        b"lunch.test%2f@evil.com".to_vec(),
        b"[::1]".to_vec(),
        b"[::ffff:127.0.0.1]:80".to_vec(),
        b"[::1]@evil.com".to_vec(),
        b"[evil.com]".to_vec(),
        "l\u{fc}nch.test".as_bytes().to_vec(),
        "lunch\u{2024}test".as_bytes().to_vec(),
        "xn--lnch-0ra.test".as_bytes().to_vec(),
        b"lunch.test\tevil.com".to_vec(),
        b"".to_vec(),
        "a.".repeat(200).into_bytes(),
        "a".repeat(10_000).into_bytes(),
    ];
    let mut requests: Vec<Vec<u8>> = hosts
        .into_iter()
        .map(|host| [&b"GET /p HTTP/1.1\r\nHost: "[..], &host, b"\r\n\r\n"].concat())
        .collect();
    for raw in [
        // A header injected after the Host line is just another header.
        "GET /p HTTP/1.1\r\nHost: lunch.test\r\nLocation: https://evil.com/\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: evil.com\r\nHost: lunch.test\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: lunch.test\r\nX-Forwarded-Host: evil.com\r\n\r\n",
        "GET http://evil.com/ HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET http://lunch.test@evil.com/ HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET http://evil.com@lunch.test/ HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET https://evil.com:443/ HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET //evil.com/ HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET /\\evil.com HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
        "GET /p HTTP/1.0\r\n\r\n",
    ] {
        requests.push(raw.as_bytes().to_vec());
    }
    requests
}

/// The redirect names only `allowed` hosts on the HTTPS port, or is refused.
fn assert_safe_redirect(response: &str, allowed: &[&str], https: u16, request: &[u8]) {
    let request = String::from_utf8_lossy(request);
    let request = request.get(..120).unwrap_or(&request);
    let status = status_of(response).unwrap_or_else(|| panic!("no answer to {request:?}: {response:?}"));
    let locations = locations(response);
    match status {
        301 | 308 => {
            assert_eq!(locations.len(), 1, "{request:?}: {response}");
            let location = locations[0];
            assert!(
                allowed
                    .iter()
                    .any(|host| location.starts_with(&format!("https://{host}:{https}/"))),
                "{request:?} was redirected to {location:?}"
            );
        }
        400..=499 => assert!(locations.is_empty(), "{request:?}: {response}"),
        _ => panic!("{request:?}: unexpected answer {response}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_name_an_attackers_host() {
    // Without a canonical host, only the certificate's names are used.
    let served = Served::start("", "").await;
    let mut refused = 0;
    for request in hostile_requests() {
        let response = exchange_one(served.http(), &request).await;
        assert_safe_redirect(&response, &["lunch.test", "localhost"], served.https(), &request);
        refused += usize::from(status_of(&response).is_some_and(|s| s >= 400));
    }
    assert!(refused > 20, "most hostile hosts must be refused, {refused} were");
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_fall_back_to_the_canonical_host() {
    let served = Served::start("", "[http]\ncanonical_host = \"lunch.test\"\n").await;
    let mut redirected = 0;
    for request in hostile_requests() {
        let response = exchange_one(served.http(), &request).await;
        assert_safe_redirect(&response, &["lunch.test"], served.https(), &request);
        redirected += usize::from(status_of(&response) == Some(301));
    }
    assert!(
        redirected > 20,
        "hostile hosts must go to the canonical host, {redirected} did"
    );
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acme_webroot_cannot_be_escaped() {
    let outside = tempfile::tempdir().unwrap();
    const SECRET: &str = "secret-outside-the-webroot";
    std::fs::write(outside.path().join("secret"), SECRET).unwrap();
    let webroot = tempfile::tempdir().unwrap();
    let challenges = webroot.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).unwrap();
    std::fs::write(challenges.join("good-token_1"), "good-token_1.thumbprint").unwrap();
    std::fs::write(webroot.path().join("secret"), SECRET).unwrap();
    std::fs::create_dir(challenges.join("a-directory")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), challenges.join("link-out")).unwrap();
    std::os::unix::fs::symlink(challenges.join("good-token_1"), challenges.join("link-in")).unwrap();
    std::os::unix::fs::symlink(outside.path(), challenges.join("dir-out")).unwrap();
    std::fs::write(challenges.join("huge"), vec![b'a'; 100 * 1024]).unwrap();
    let served = Served::start(
        "",
        &format!("[http]\nacme_webroot = \"{}\"\n", webroot.path().display()),
    )
    .await;

    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n");
    let (response, _) = exchange(
        served.http(),
        get("/.well-known/acme-challenge/good-token_1").as_bytes(),
        false,
    )
    .await;
    assert_eq!(status_of(&response), Some(200), "{response}");
    assert!(response.ends_with("\r\n\r\ngood-token_1.thumbprint"), "{response}");

    let secret_path = outside.path().join("secret");
    let absolute = format!("/.well-known/acme-challenge/{}", secret_path.display());
    let escapes = [
        "/.well-known/acme-challenge/../secret",
        "/.well-known/acme-challenge/../../secret",
        "/.well-known/acme-challenge/%2e%2e/%2e%2e/secret",
        "/.well-known/acme-challenge/%2e%2e%2f%2e%2e%2fsecret",
        "/.well-known/acme-challenge/..%2f..%2fsecret",
        "/.well-known/acme-challenge/..%5c..%5csecret",
        "/.well-known/acme-challenge/%252e%252e%252fsecret",
        "/.well-known/acme-challenge/.%00./secret",
        "/.well-known/acme-challenge//etc/passwd",
        absolute.as_str(),
        "/.well-known/acme-challenge/link-out",
        "/.well-known/acme-challenge/link-in",
        "/.well-known/acme-challenge/dir-out/secret",
        "/.well-known/acme-challenge/a-directory",
        "/.well-known/acme-challenge/huge",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/good-token_1/",
        "/.well-known/acme-challenge/good-token_1%00",
        "/.well-known/acme-challenge/./good-token_1",
    ];
    for path in escapes {
        let (response, _) = exchange(served.http(), get(path).as_bytes(), false).await;
        assert!(!response.contains(SECRET), "{path} leaked the secret: {response}");
        let status = status_of(&response);
        assert!(
            status == Some(404) || status == Some(400),
            "{path}: expected a refusal, got {response}"
        );
    }
    // Only GET and HEAD are challenge requests; others are redirected.
    let post =
        b"POST /.well-known/acme-challenge/good-token_1 HTTP/1.1\r\nHost: lunch.test\r\nContent-Length: 0\r\n\r\n";
    let (response, _) = exchange(served.http(), post, false).await;
    assert_eq!(status_of(&response), Some(308), "{response}");
    served.assert_healthy().await;
}
