//! The start of a connection on the TLS port: a TLS handshake, or, when
//! the client speaks plain HTTP there, a readable refusal.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How a connection on the TLS port began.
pub(crate) enum Handshake {
    /// A finished TLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// Plain HTTP, answered with a 400 and closed.
    Plaintext,
    /// Closed before the first byte.
    Closed,
}

/// The first byte of a TLS connection is a handshake record (0x16). Anything
/// else is most likely `http://` sent to the HTTPS port: answer it in plain
/// text instead of a TLS alert the client cannot show.
pub(crate) async fn handshake(acceptor: &TlsAcceptor, mut stream: TcpStream) -> io::Result<Handshake> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(Handshake::Closed);
    }
    // Both boxed: the connection's task holds this future's state in its
    // own, for the life of the connection, and the handshake's (a
    // connection's rustls state) and the refusal's (its read buffer) are
    // needed only for a moment.
    if first[0] != 0x16 {
        Box::pin(refuse_plaintext(&mut stream)).await;
        return Ok(Handshake::Plaintext);
    }
    Ok(Handshake::Tls(Box::new(Box::pin(acceptor.accept(stream)).await?)))
}

async fn refuse_plaintext(stream: &mut TcpStream) {
    const BODY: &str = "This port speaks HTTPS only; use an https:// address.\n";
    // Read what the client sent so closing does not reset the connection
    // before it has read the answer.
    let mut request = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut request)).await;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;

    use super::*;
    use crate::testing::{socket_pair, tls_pair};

    #[tokio::test]
    async fn plain_http_on_the_tls_port_gets_a_readable_400() {
        let (acceptor, _) = tls_pair(&[]);
        let (mut client, server) = socket_pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n")
            .await
            .unwrap();
        let served = tokio::spawn(async move { handshake(&acceptor, server).await });
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(matches!(served.await.unwrap(), Ok(Handshake::Plaintext)));
        assert_eq!(
            response,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 54\r\n\
             Connection: close\r\n\r\nThis port speaks HTTPS only; use an https:// address.\n"
        );
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_no_failure() {
        let (acceptor, _) = tls_pair(&[]);
        let (client, server) = socket_pair().await;
        drop(client);
        assert!(matches!(handshake(&acceptor, server).await, Ok(Handshake::Closed)));
    }

    #[tokio::test]
    async fn a_tls_client_gets_a_handshake_and_its_protocol() {
        for (offered, chosen) in [(&b"h2"[..], &b"h2"[..]), (b"http/1.1", b"http/1.1")] {
            let (acceptor, client_config) = tls_pair(&[offered]);
            let (client, server) = socket_pair().await;
            let connector = tokio_rustls::TlsConnector::from(client_config);
            let name = ServerName::try_from("lunch.test").unwrap();
            let (client, served) = tokio::join!(connector.connect(name, client), handshake(&acceptor, server));
            let _client = client.unwrap();
            match served.unwrap() {
                Handshake::Tls(tls) => assert_eq!(tls.get_ref().1.alpn_protocol(), Some(chosen)),
                _ => panic!("no TLS handshake"),
            }
        }
    }

    #[tokio::test]
    async fn a_broken_handshake_is_an_error() {
        let (acceptor, _) = tls_pair(&[]);
        let (mut client, server) = socket_pair().await;
        // A handshake record header followed by garbage.
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        assert!(handshake(&acceptor, server).await.is_err());
    }
}
