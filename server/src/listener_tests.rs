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

/// A real accept loop on a loopback socket, serving a route that reads its body (as the
/// server API's POST handlers do), with `body_timeout` and a 64-byte body bound.
async fn body_server(body_timeout: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/echo",
        axum::routing::post(|body: axum::body::Bytes| async move { body }),
    );
    let settings = Settings {
        caps: Caps {
            max: 100,
            max_per_ip: 100,
        },
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 16384,
        body_limits: BodyLimits {
            max_bytes: 64,
            read_timeout: body_timeout,
        },
        trusted_proxies: TrustedProxies::default(),
    };
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(run(
        listener,
        app,
        settings,
        metrics,
        std::future::pending(),
    ));
    addr
}

/// Everything the server sends until it closes the connection (bounded).
async fn read_until_closed<R: AsyncRead + Unpin>(stream: &mut R, within: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut got))
        .await
        .expect("the server closed the connection in time")
        .ok();
    String::from_utf8_lossy(&got).into_owned()
}

/// The head of a POST /echo with `Content-Length: length`.
fn post_head(length: usize) -> String {
    format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
}

/// A head, then a body trickled a byte every 100 ms (it would take 6 s): the server answers
/// 408 `body_timeout` once the body deadline has passed since the head, however recently the
/// last byte came, and closes the connection. A body sent in time is served.
#[tokio::test]
async fn a_trickled_body_gets_408_at_the_deadline_and_the_connection_closes() {
    use tokio::io::AsyncWriteExt as _;
    let addr = body_server(Duration::from_millis(500)).await;
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    writer.write_all(post_head(60).as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        for _ in 0..60 {
            if writer.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let answer = tokio::select! {
        () = trickle => unreachable!(),
        answer = read_until_closed(&mut reader, Duration::from_secs(3)) => answer,
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"body_timeout\""), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A head whose body never comes at all: the same.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(post_head(10).as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{}hello", post_head(5)).as_bytes())
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("hello"), "{answer:?}");
}

/// A declared body over the bound is refused before it is read; so is a chunked one once it
/// passes the bound.
#[tokio::test]
async fn a_body_over_the_bound_gets_413_declared_or_chunked() {
    use tokio::io::AsyncWriteExt as _;
    let addr = body_server(Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(post_head(1 << 30).as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("\"body_too_large\""), "{answer:?}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = format!("40\r\n{}\r\n", "y".repeat(64));
    s.write_all(format!("{head}{chunk}{chunk}").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
}
