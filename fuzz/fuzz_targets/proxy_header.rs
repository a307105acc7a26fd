//! The first bytes of a connection on a server behind a load balancer
//! (`[proxy] from`), through `lunch_net::proxy::read_client` as the
//! server's workers call it: whatever arrives, the reader never panics,
//! never reads past the header it accepts (the TLS handshake starts
//! right after it), reads nothing from an untrusted peer, and the client
//! it returns is the one the header's address block names.
//!
//! The first byte chooses the peer (odd: a trusted balancer); the rest is
//! what it sends before closing.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lunch_net::proxy::{self, MAX_HEADER, ProxyError, Trusted};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

fn trusted() -> &'static Trusted {
    static TRUSTED: OnceLock<Trusted> = OnceLock::new();
    TRUSTED.get_or_init(|| Trusted::parse(&["10.77.0.0/24", "fd00::/64"]).unwrap())
}

/// The client a valid PROXY command's address block names, read by hand
/// from the header (haproxy's proxy-protocol.txt, 2.2), or `None` for
/// what the reader must treat as the balancer's own connection.
fn named_client(header: &[u8]) -> Option<SocketAddr> {
    if header[12] & 0x0f != 1 {
        return None;
    }
    let block = &header[16..];
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match header[13] >> 4 {
        1 if block.len() >= 12 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port(8)))
        }
        2 if block.len() >= 36 => {
            let octets: [u8; 16] = block[..16].try_into().unwrap();
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port(32)))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, sent)) = data.split_first() else {
        return;
    };
    let peer: SocketAddr = if choice & 1 == 1 {
        "10.77.0.1:40000".parse().unwrap()
    } else {
        "198.51.100.9:40000".parse().unwrap()
    };
    runtime().block_on(async {
        let (mut client, mut server) = tokio::io::duplex(sent.len() + 1);
        client.write_all(sent).await.unwrap();
        drop(client);
        let result = proxy::read_client(trusted(), &mut server, peer, Duration::from_secs(10)).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        let consumed = sent.len() - rest.len();
        assert_eq!(rest, sent[consumed..], "the reader lost bytes");
        match result {
            Ok(client) => {
                assert!(trusted().contains(peer.ip()), "a header from {peer} was read");
                // Exactly one whole header was read, no byte more.
                assert!(consumed >= 16 && consumed <= MAX_HEADER, "{consumed} bytes read");
                let header = &sent[..consumed];
                assert_eq!(&header[..12], SIGNATURE);
                assert_eq!(header[12] >> 4, 2, "not version 2");
                let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
                assert_eq!(consumed, 16 + length);
                assert_eq!(client, named_client(header).unwrap_or(peer));
            }
            Err(ProxyError::Untrusted(p)) => {
                assert_eq!(p, peer);
                assert!(!trusted().contains(peer.ip()));
                assert_eq!(consumed, 0, "an untrusted peer's bytes were read");
            }
            Err(ProxyError::Timeout(_)) => panic!("a closed connection timed out"),
            Err(e) => {
                assert!(trusted().contains(peer.ip()));
                // Refused within the fixed part and the length it announced.
                assert!(consumed <= MAX_HEADER, "{consumed} bytes read before refusing: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    });
});
