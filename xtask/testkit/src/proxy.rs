//! PROXY protocol v2 headers as a load balancer sends them (haproxy's
//! doc/proxy-protocol.txt, section 2.2), written out byte by byte, not
//! with the parser lunchd reads them with.

use std::net::SocketAddrV4;

/// The 12-byte signature every v2 header starts with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The header of a connection the balancer makes for itself (version 2,
/// LOCAL, no addresses), as HAProxy's health checks send it.
pub fn proxy_v2_local() -> Vec<u8> {
    let mut header = SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0, 0]);
    header
}

/// The header of a TCP connection from `source` to `destination`
/// (version 2, PROXY, TCP over IPv4).
pub fn proxy_v2(source: SocketAddrV4, destination: SocketAddrV4) -> Vec<u8> {
    let mut header = SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&source.ip().octets());
    header.extend_from_slice(&destination.ip().octets());
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_what_the_specification_shows() {
        let header = proxy_v2("192.0.2.1:51234".parse().unwrap(), "10.0.0.1:443".parse().unwrap());
        assert_eq!(header.len(), 16 + 12);
        assert_eq!(&header[12..16], &[0x21, 0x11, 0x00, 0x0c]);
        assert_eq!(&header[16..20], &[192, 0, 2, 1]);
        assert_eq!(&header[24..28], &[0xc8, 0x22, 0x01, 0xbb]);
        assert_eq!(proxy_v2_local(), b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
    }
}
