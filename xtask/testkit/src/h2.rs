//! HTTP/2 written by hand, frame by frame: for tests that must send what
//! no well-behaved client would, and for holding connections with no
//! client library's buffers in the measurement.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame type DATA.
pub const DATA: u8 = 0x0;
/// Frame type HEADERS.
pub const HEADERS: u8 = 0x1;
/// Frame type RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// Frame type SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// Frame type PING.
pub const PING: u8 = 0x6;
/// Frame type GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// Frame type CONTINUATION.
pub const CONTINUATION: u8 = 0x9;
/// Flag END_STREAM (DATA, HEADERS).
pub const END_STREAM: u8 = 0x1;
/// Flag END_HEADERS (HEADERS, CONTINUATION).
pub const END_HEADERS: u8 = 0x4;
/// Flag ACK (SETTINGS, PING).
pub const ACK: u8 = 0x1;

/// One frame: the 9-byte head, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame payload fits in 24 bits");
    assert!(len < 1 << 24, "a frame payload fits in 24 bits");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `first`
/// (RFC 7541 §5.1).
pub fn hpack_int(value: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, with a literal name.
pub fn literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(name.len(), 7, 0, out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(value.len(), 7, 0, out);
    out.extend_from_slice(value.as_bytes());
}

/// `GET https://{authority}{path}` as an HPACK block: `:method GET` and
/// `:scheme https` from the static table, then `:path` and `:authority`
/// as literals with indexed names.
pub fn get(path: &str, authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87];
    for (name_index, value) in [(4, path), (1, authority)] {
        block.push(name_index);
        hpack_int(value.len(), 7, 0, &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_integers_are_as_the_rfcs_spell_them() {
        assert_eq!(frame(SETTINGS, ACK, 0, &[]), [0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]);
        assert_eq!(frame(PING, 0, 0, &[7; 8])[..5], [0, 0, 8, PING, 0]);
        assert_eq!(frame(DATA, 0, 0x0102_0304, &[])[5..], [1, 2, 3, 4]);
        // RFC 7541 C.1.1, C.1.2: 10 and 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        hpack_int(10, 5, 0, &mut out);
        hpack_int(1337, 5, 0, &mut out);
        assert_eq!(out, [10, 31, 154, 10]);
        assert_eq!(
            get("/healthz", "localhost"),
            [&[0x82, 0x87, 0x04, 8][..], b"/healthz", &[0x01, 9], b"localhost"].concat()
        );
    }
}
