//! What the unit tests share: real socket pairs, a real certificate, a
//! real handler.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::redirect::{AllowedHosts, RedirectPolicy, Redirector};
use crate::tls::{CertificateStore, LoadedCertificate, server_config};

/// A TLS acceptor serving a fresh self-signed certificate for
/// `lunch.test`, and a client configuration that trusts it.
pub(crate) fn tls_pair(alpn: &[&[u8]]) -> (TlsAcceptor, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["lunch.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let loaded = LoadedCertificate::from_pem(
        key.serialize_pem().as_bytes(),
        "key.pem".as_ref(),
        cert.pem().as_bytes(),
        "cert.pem".as_ref(),
        SystemTime::now(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(server_config(CertificateStore::new(loaded)));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (acceptor, Arc::new(client))
}

/// A connected pair of real TCP sockets: (client, server).
pub(crate) async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// The redirect handler, for `lunch.test` on port 443.
pub(crate) fn redirector() -> Redirector {
    Redirector::new(Arc::new(ArcSwap::from_pointee(RedirectPolicy {
        allowed: AllowedHosts::List(vec!["lunch.test".to_owned()]),
        canonical: None,
        https_port: 443,
        acme_webroot: None,
    })))
}
