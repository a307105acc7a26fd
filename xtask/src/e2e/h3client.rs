//! An HTTP/3 client (quinn + h3) of the lunchd inside the container, on
//! a UDP socket made in the container's network namespace: it holds a
//! request in flight for the drain step.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes};

use super::client::Tls;
use super::container::Container;

const TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a response the held request lets lunchd send before the
/// client reads on: QUIC's flow control window of its stream.
pub(crate) const WINDOW: u32 = 1024;

/// A QUIC connection to `127.0.0.1:port` inside the container, with a
/// runtime of its own that keeps it going between calls.
pub(crate) struct H3Client {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    name: String,
    target: SocketAddr,
}

/// A response whose headers have arrived but whose body the client has
/// not read: lunchd has answered but cannot finish until the client reads.
pub(crate) struct Held {
    connection: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    /// The response's status.
    pub(crate) status: u16,
    /// Its `content-length`.
    pub(crate) length: usize,
}

impl H3Client {
    /// A client trusting what `tls` trusts, its streams' receive window
    /// [`WINDOW`] bytes.
    pub(crate) fn new(container: &Container, tls: &Tls, port: u16) -> anyhow::Result<H3Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the HTTP/3 client's runtime")?;
        let socket = container
            .in_netns(|| UdpSocket::bind("127.0.0.1:0"))?
            .context("binding a UDP socket in the container")?;
        let endpoint = {
            let _entered = runtime.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .context("a QUIC endpoint in the container")?
        };
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.config_for(b"h3"))
            .context("the client's TLS configuration cannot do QUIC")?;
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(WINDOW));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(H3Client {
            runtime,
            endpoint,
            config,
            name: tls.name(),
            target: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// A new connection, its handshake verified; the error says why not.
    pub(crate) fn connect(&self) -> anyhow::Result<quinn::Connection> {
        self.runtime.block_on(async {
            let connecting = self
                .endpoint
                .connect_with(self.config.clone(), self.target, &self.name)?;
            let connection = tokio::time::timeout(TIMEOUT, connecting)
                .await
                .context("the QUIC handshake timed out")??;
            Ok(connection)
        })
    }

    /// `GET path` on a new connection, held after the response's headers.
    pub(crate) fn hold(&self, path: &str) -> anyhow::Result<Held> {
        let connection = self.connect()?;
        let uri = self.uri(path)?;
        self.runtime.block_on(async {
            let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
                .await
                .context("HTTP/3 setup")?;
            tokio::spawn(async move { driver.wait_idle().await });
            let exchange = async {
                let mut stream = send.send_request(http::Request::get(uri).body(())?).await?;
                stream.finish().await?;
                let response = stream.recv_response().await?;
                Ok::<_, anyhow::Error>((stream, response))
            };
            let (stream, response) = tokio::time::timeout(TIMEOUT, exchange)
                .await
                .context("no response headers within 10 s")??;
            let length = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .context("the response has no content-length")?;
            Ok(Held {
                connection,
                send,
                stream,
                status: response.status().as_u16(),
                length,
            })
        })
    }

    fn uri(&self, path: &str) -> anyhow::Result<http::Uri> {
        Ok(format!("https://{}{path}", self.name).parse()?)
    }

    /// Another `GET path` on the held request's connection: how it was
    /// refused, or an error if it was answered.
    pub(crate) fn refused_on(&self, held: &mut Held, path: &str) -> anyhow::Result<String> {
        let uri = self.uri(path)?;
        self.runtime.block_on(async {
            let attempt = async {
                let mut stream = match held.send.send_request(http::Request::get(uri).body(())?).await {
                    Ok(stream) => stream,
                    Err(e) => return Ok(format!("the client would not send it: {e}")),
                };
                let _ = stream.finish().await;
                match stream.recv_response().await {
                    Ok(response) => bail!("answered {} after the GOAWAY", response.status()),
                    Err(e) => Ok(format!("sent, then {e}")),
                }
            };
            tokio::time::timeout(TIMEOUT, attempt)
                .await
                .context("neither refused nor answered within 10 s")?
        })
    }

    /// Reads the rest of the held response and closes its connection;
    /// returns the body.
    pub(crate) fn finish(&self, held: Held) -> anyhow::Result<Vec<u8>> {
        let Held {
            connection, mut stream, ..
        } = held;
        self.runtime.block_on(async {
            let mut body = Vec::new();
            let read = tokio::time::timeout(TIMEOUT, async {
                while let Some(chunk) = stream.recv_data().await? {
                    body.put(chunk);
                }
                Ok::<_, h3::error::StreamError>(())
            })
            .await;
            connection.close(quinn::VarInt::from_u32(0x100), b"");
            match read {
                Err(_) => bail!(
                    "the rest of the response did not come within 10 s ({} bytes read)",
                    body.len()
                ),
                Ok(Err(e)) => bail!("the response was cut off after {} bytes: {e}", body.len()),
                Ok(Ok(())) => Ok(body),
            }
        })
    }
}

impl Drop for H3Client {
    fn drop(&mut self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"");
    }
}
