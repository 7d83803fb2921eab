//! The admission decisions as tables: caps and reserves, address buckets,
//! trusted-proxy resolution, fitting to the descriptor limit, permits.

use super::*;

const CAPS: Caps = Caps {
    max: 100,
    max_per_ip: 10,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn decide_admits_refuses_then_closes() {
    use Refusal::*;
    // (total open, from this address (None = trusted proxy), verdict)
    let cases: &[(usize, Option<usize>, Verdict)] = &[
        (0, Some(0), Verdict::Admit),
        (99, Some(9), Verdict::Admit),
        (99, Some(10), Verdict::Refuse(TooManyFromAddress)),
        (
            50,
            Some(10 + REFUSALS_PER_ADDRESS - 1),
            Verdict::Refuse(TooManyFromAddress),
        ),
        (50, Some(10 + REFUSALS_PER_ADDRESS), Verdict::Close),
        (100, Some(0), Verdict::Refuse(ServerBusy)),
        // Overall is checked before per-address: the answer names the real cause.
        (100, Some(10), Verdict::Refuse(ServerBusy)),
        (115, Some(0), Verdict::Refuse(ServerBusy)),
        (116, Some(0), Verdict::Close),
        // A trusted proxy's own sockets only count in the total.
        (99, None, Verdict::Admit),
        (100, None, Verdict::Refuse(ServerBusy)),
        (116, None, Verdict::Close),
    ];
    for (total, from, want) in cases {
        assert_eq!(
            decide(*total, *from, CAPS),
            *want,
            "total {total}, from {from:?}"
        );
    }
}

#[test]
fn refusal_reserve_is_a_tenth_at_least_sixteen() {
    assert_eq!(refusal_reserve(1), 16);
    assert_eq!(refusal_reserve(100), 16);
    assert_eq!(refusal_reserve(10_000), 1000);
}

#[test]
fn buckets_are_addresses_for_v4_and_slash_64_for_v6() {
    let cases = [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::"),
        ("2001:db8:1:2::1", "2001:db8:1:2::"),
        ("::1", "::"),
    ];
    for (addr, want) in cases {
        assert_eq!(bucket(ip(addr)), ip(want), "{addr}");
    }
}

#[test]
fn trusted_proxy_entries_parse_as_cidrs_or_addresses() {
    assert_eq!(
        parse_trusted_proxy("10.0.0.0/8"),
        Ok("10.0.0.0/8".parse().unwrap())
    );
    assert_eq!(
        parse_trusted_proxy(" 192.0.2.7 "),
        Ok("192.0.2.7/32".parse().unwrap())
    );
    assert_eq!(
        parse_trusted_proxy("2001:db8::/32"),
        Ok("2001:db8::/32".parse().unwrap())
    );
    // Host bits are dropped: 10.1.2.3/8 means 10.0.0.0/8.
    assert_eq!(
        parse_trusted_proxy("10.1.2.3/8"),
        Ok("10.0.0.0/8".parse().unwrap())
    );
    for bad in ["", "10.0.0.0/33", "proxy.example", "10.0.0"] {
        let err = parse_trusted_proxy(bad).unwrap_err();
        assert!(err.contains("CIDR"), "{bad:?}: {err}");
    }
}

fn trusted(list: &[&str]) -> TrustedProxies {
    TrustedProxies::new(
        list.iter()
            .map(|e| parse_trusted_proxy(e).unwrap())
            .collect(),
    )
}

fn xff(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn client_address_believes_only_trusted_proxies() {
    let proxies = trusted(&["10.0.0.0/8", "192.0.2.1"]);
    // (peer, X-Forwarded-For values, client)
    let cases: &[(&str, &[&str], &str)] = &[
        // Not a proxy: the header is ignored, whatever it says.
        ("198.51.100.9", &["203.0.113.5"], "198.51.100.9"),
        ("198.51.100.9", &[], "198.51.100.9"),
        // A trusted proxy without the header: the proxy itself.
        ("10.1.1.1", &[], "10.1.1.1"),
        ("10.1.1.1", &["203.0.113.5"], "203.0.113.5"),
        ("::ffff:10.1.1.1", &["203.0.113.5"], "203.0.113.5"),
        // Rightmost untrusted entry wins: a client cannot choose its
        // address by prepending one.
        ("10.1.1.1", &["6.6.6.6, 203.0.113.5"], "203.0.113.5"),
        ("10.1.1.1", &["6.6.6.6", "203.0.113.5"], "203.0.113.5"),
        // Chains of trusted proxies are skipped.
        (
            "10.1.1.1",
            &["203.0.113.5, 192.0.2.1, 10.2.2.2"],
            "203.0.113.5",
        ),
        // All trusted: the leftmost.
        ("10.1.1.1", &["10.3.3.3, 10.2.2.2"], "10.3.3.3"),
        // Ports and brackets.
        ("10.1.1.1", &["203.0.113.5:4711"], "203.0.113.5"),
        ("10.1.1.1", &["[2001:db8::7]:443"], "2001:db8::7"),
        ("10.1.1.1", &["[2001:db8::7]"], "2001:db8::7"),
        ("10.1.1.1", &["2001:db8::7"], "2001:db8::7"),
        // Garbage stops the walk at the last trusted hop.
        ("10.1.1.1", &["unknown"], "10.1.1.1"),
        ("10.1.1.1", &["203.0.113.5, garbage, 10.2.2.2"], "10.2.2.2"),
        ("10.1.1.1", &["garbage, 203.0.113.5"], "203.0.113.5"),
    ];
    for (peer, values, want) in cases {
        assert_eq!(
            client_address(ip(peer), &xff(values), &proxies),
            ip(want),
            "peer {peer}, X-Forwarded-For {values:?}"
        );
    }
    // No trusted proxies configured: never believed.
    assert_eq!(
        client_address(
            ip("10.1.1.1"),
            &xff(&["203.0.113.5"]),
            &TrustedProxies::default()
        ),
        ip("10.1.1.1")
    );
}

#[test]
fn fit_to_fd_limit_leaves_room_for_reserve_and_headroom() {
    assert_eq!(fit_to_fd_limit(10_000, 1_048_576), 10_000);
    assert_eq!(fit_to_fd_limit(10_000, 10_000 + 1000 + 64), 10_000);
    let fitted = fit_to_fd_limit(10_000, 1024);
    assert!(fitted + refusal_reserve(fitted) + 64 <= 1024, "{fitted}");
    assert!(
        fitted + 1 + refusal_reserve(fitted + 1) + 64 > 1024,
        "{fitted} not the largest"
    );
    assert_eq!(fit_to_fd_limit(10_000, 10), 1);
}

#[test]
fn permits_count_while_alive() {
    let admission = Admission::new(
        Caps {
            max: 3,
            max_per_ip: 2,
        },
        trusted(&["10.0.0.1"]),
    );
    let a = ip("192.0.2.1");
    let (v1, p1) = admission.admit_socket(a);
    let (v2, p2) = admission.admit_socket(a);
    let (v3, p3) = admission.admit_socket(a);
    assert_eq!(
        [v1, v2, v3],
        [
            Verdict::Admit,
            Verdict::Admit,
            Verdict::Refuse(Refusal::TooManyFromAddress)
        ]
    );
    assert_eq!(admission.open(), 3);
    // The proxy's socket counts in the total only; the total is now full.
    let (v, proxy_socket) = admission.admit_socket(ip("10.0.0.1"));
    assert_eq!(v, Verdict::Refuse(Refusal::ServerBusy));
    drop((p3, proxy_socket));
    drop(p1);
    assert_eq!(admission.open(), 1);
    let (v, p4) = admission.admit_socket(a);
    assert_eq!(v, Verdict::Admit);
    // Forwarded clients share the per-address count with direct sockets.
    assert_eq!(
        admission.admit_forwarded(a).unwrap_err(),
        Refusal::TooManyFromAddress
    );
    let f1 = admission.admit_forwarded(ip("203.0.113.5")).unwrap();
    let f2 = admission.admit_forwarded(ip("203.0.113.5")).unwrap();
    assert_eq!(
        admission.admit_forwarded(ip("203.0.113.5")).unwrap_err(),
        Refusal::TooManyFromAddress
    );
    assert_eq!(admission.open(), 2, "forwarded requests add no socket");
    drop((f1, f2, p2, p4));
    assert_eq!(admission.open(), 0);
    assert!(admission.lock().per_address.is_empty());
}

#[tokio::test]
async fn refusals_are_json_with_retry_after_and_close() {
    for (refusal, status, code) in [
        (Refusal::ServerBusy, 503, "server_busy"),
        (Refusal::TooManyFromAddress, 429, "too_many_connections"),
    ] {
        let response = refusal.response();
        assert_eq!(response.status().as_u16(), status);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], RETRY_AFTER_SECS.to_string());
        assert_eq!(headers[header::CONNECTION], "close");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn health_paths_are_exact() {
    assert!(is_health("/webrtc/health/live"));
    assert!(is_health("/webrtc/health/ready"));
    assert!(is_health("/webrtc/health"));
    assert!(!is_health("/webrtc/health/live/x"));
    assert!(!is_health("/webrtc/stats"));
}
