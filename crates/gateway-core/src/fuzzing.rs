//! Entry points of the fuzz targets (`fuzz/`), one per parser that sees hostile input first: the
//! token pre-parser, the path check and the header sanitiser. Each runs the real code on
//! arbitrary bytes and asserts what must hold whatever the input; a panic is a finding. The
//! ordinary test suite replays every seed and found input of `fuzz/corpus/` through them.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::jwt::preparse;
use crate::edge::proxies::{Cidr, client_ip};
use crate::edge::{IDENTITY_HEADERS, TraceContext, path};

/// The token pre-parser: never panics; what it accepts has exactly three segments and names an
/// issuer.
pub fn token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if preparse(token).is_ok() {
        assert_eq!(token.split('.').count(), 3, "{token:?}");
    }
}

/// The path check: whatever it accepts is already normal, so a backend that decodes it once sees
/// the same segments the gateway routed and authorised, none of them `.` or `..`.
pub fn path(data: &[u8]) {
    let Ok(p) = std::str::from_utf8(data) else {
        return;
    };
    if path::check(p, p.len(), 8192).is_err() {
        return;
    }
    assert!(p.starts_with('/'), "{p:?}");
    assert!(!p.contains('\\'), "{p:?}");
    let decoded = percent_decode(p);
    let (raw_segments, decoded_segments): (Vec<&str>, Vec<&[u8]>) = (
        p.split('/').collect(),
        decoded.split(|b| *b == b'/').collect(),
    );
    assert_eq!(raw_segments.len(), decoded_segments.len(), "{p:?}");
    for seg in decoded_segments {
        assert!(seg != b"." && seg != b".." && !seg.contains(&0), "{p:?}");
    }
}

/// The header sanitiser: headers forwarded upstream never include hop-by-hop ones, those named in
/// `Connection`, credentials or identity claims; the client address is the peer or a hop the
/// client sent; a continued trace keeps its id.
pub fn headers(data: &[u8]) {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let mut parts = line.splitn(2, |b| *b == b':');
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    let forwarded = crate::proxy::request_headers(&map);
    let named: Vec<String> = map
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for name in forwarded.keys() {
        let n = name.as_str();
        assert!(
            !crate::proxy::HOP_BY_HOP.contains(&n)
                && !IDENTITY_HEADERS.contains(&n)
                && !["authorization", "x-api-key", "x-forwarded-for", "host"].contains(&n)
                && !named.iter().any(|c| c == n),
            "{n} forwarded"
        );
    }
    let peer = IpAddr::from([10, 0, 0, 1]);
    let trusted = [Cidr::parse("10.0.0.0/8").expect("cidr")];
    let hops: Vec<&str> = map
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let client = client_ip(peer, hops.iter().copied(), &trusted);
    assert!(
        client == peer
            || hops
                .iter()
                .flat_map(|h| h.split(','))
                .any(|h| h.trim().parse::<IpAddr>().ok() == Some(client)),
        "{client} came from nowhere"
    );
    if let Some(tp) = map.get("traceparent") {
        let trace = TraceContext::from_header(Some(tp));
        let again = HeaderValue::from_str(&trace.header()).expect("a header we wrote");
        assert_eq!(
            TraceContext::from_header(Some(&again)).trace_id,
            trace.trace_id
        );
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(0));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
