//! Value parsers for the settings table: text in, typed value or a one-line
//! message out. Pure functions; they never echo a secret.

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::Secret;

pub fn text(v: &str) -> Result<String, String> {
    Ok(v.to_owned())
}

pub fn secret(v: &str) -> Result<Secret, String> {
    Ok(Secret::new(v))
}

/// Redis URLs that may carry passwords: checked for their scheme, never echoed.
pub fn secret_urls(urls: Vec<String>) -> Result<Vec<Secret>, String> {
    if urls.is_empty() {
        return Err("expected at least one redis:// or rediss:// URL".to_owned());
    }
    let bad = urls
        .iter()
        .filter(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        .count();
    if bad > 0 {
        return Err(format!(
            "expected redis:// or rediss:// URLs ({bad} of {} are not)",
            urls.len()
        ));
    }
    Ok(urls.into_iter().map(Secret::new).collect())
}

pub fn addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:8080, got {v:?}"))
}

/// An integer no smaller than `min`.
pub fn at_least<T: FromStr + PartialOrd + Display>(v: &str, min: T) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("expected an integer >= {min}, got {v:?}")),
    }
}

pub fn seconds_at_least(v: &str, min: u64) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= min => Ok(Duration::from_secs(n)),
        _ => Err(format!("expected seconds >= {min}, got {v:?}")),
    }
}

/// Seconds, where 0 means "no limit" (`None`).
pub fn seconds_or_off(v: &str) -> Result<Option<Duration>, String> {
    match v.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(Duration::from_secs(n))),
        Err(_) => Err(format!("expected seconds (0 = no limit), got {v:?}")),
    }
}

/// A count, where 0 means "no limit" (`None`).
pub fn count_or_off(v: &str) -> Result<Option<usize>, String> {
    match v.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("expected an integer (0 = no limit), got {v:?}")),
    }
}

pub fn milliseconds(v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("expected milliseconds, got {v:?}"))
}

pub fn milliseconds_at_least(v: &str, min: u64) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= min => Ok(Duration::from_millis(n)),
        _ => Err(format!("expected milliseconds >= {min}, got {v:?}")),
    }
}

/// Proxy addresses or CIDRs; the listener owns what an entry may be.
pub fn trusted_proxies(list: Vec<String>) -> Result<crate::listener::TrustedProxies, String> {
    let nets = list
        .iter()
        .map(|e| crate::listener::parse_trusted_proxy(e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::listener::TrustedProxies::new(nets))
}

pub fn instance_id(v: &str) -> Result<String, String> {
    if v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()) {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "expected up to 128 printable ASCII characters without spaces, got {v:?}"
        ))
    }
}

/// The Redis bus owns the prefix rules; checking them here turns a bad
/// prefix into exit 78 instead of a start-up failure.
pub fn key_prefix(v: &str) -> Result<String, String> {
    match crate::bus::redis::Keys::new(v, "config-check") {
        Ok(_) => Ok(v.to_owned()),
        Err(e) => Err(format!("{e}, got {v:?}")),
    }
}

/// URLs that must each start with one of `schemes`.
pub fn url_list(
    urls: Vec<String>,
    schemes: &[&str],
    expected: &str,
) -> Result<Vec<String>, String> {
    match bad_items(&urls, |u| schemes.iter().any(|s| u.starts_with(s))) {
        None => Ok(urls),
        Some(bad) => Err(format!("{expected}, got {bad}")),
    }
}

/// Allowed origins; an empty list or `*` means any origin (`None`).
pub fn origins(list: Vec<String>) -> Result<Option<Vec<String>>, String> {
    if list.is_empty() || list.iter().any(|o| o == "*") {
        return Ok(None);
    }
    if let Some(bad) = bad_items(&list, |o| {
        o.starts_with("http://") || o.starts_with("https://")
    }) {
        return Err(format!(
            "expected origins like https://example.com, got {bad}"
        ));
    }
    Ok(Some(
        list.into_iter()
            .map(|o| o.trim_end_matches('/').to_owned())
            .collect(),
    ))
}

/// The items failing `ok`, quoted and comma-separated, or `None`.
fn bad_items(items: &[String], ok: impl Fn(&str) -> bool) -> Option<String> {
    let bad: Vec<String> = items
        .iter()
        .filter(|i| !ok(i))
        .map(|i| format!("{i:?}"))
        .collect();
    (!bad.is_empty()).then(|| bad.join(", "))
}

/// Comma-separated text as a list: items trimmed, empty items dropped.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Webhook URLs: each `http://` or `https://` and a valid URI. Bad items are named by
/// position, never echoed (a URL may carry a token).
pub fn webhook_urls(urls: Vec<String>) -> Result<Vec<String>, String> {
    for (i, u) in urls.iter().enumerate() {
        check_webhook_url(u).map_err(|e| format!("item {}: {e}", i + 1))?;
    }
    Ok(urls)
}

/// Why a webhook URL cannot be used (without repeating it).
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("expected an http:// or https:// URL".into());
    }
    match url.parse::<hyper::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err("not a valid URL (check host, port and path)".into()),
    }
}

/// Event type names, comma-separated; at least one.
pub fn event_filter(names: Vec<String>) -> Result<crate::webhook::EventFilter, String> {
    event_kinds(&names).map(|k| crate::webhook::EventFilter::of(&k))
}

fn event_kinds(names: &[String]) -> Result<Vec<crate::webhook::EventKind>, String> {
    use crate::webhook::EventKind;
    if names.is_empty() {
        return Err("expected at least one event type".into());
    }
    names
        .iter()
        .map(|n| {
            EventKind::parse(n).ok_or_else(|| {
                let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown event type {n:?} (known: {})", all.join(", "))
            })
        })
        .collect()
}

/// The `webhooks.endpoints` document: a YAML (or JSON) list of endpoint objects.
pub fn webhook_endpoints(text: &str) -> Result<Vec<super::WebhookEndpointSpec>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        url: String,
        name: Option<String>,
        secret: Option<String>,
        secret_file: Option<String>,
        events: Option<Vec<String>>,
    }
    let raw: Vec<Raw> = serde_yaml::from_str(text).map_err(|e| {
        // serde's own message names the field and position; it does not repeat strings.
        let first = e.to_string();
        let first = first.lines().next().unwrap_or_default().to_owned();
        format!("expected a list of {{url, name, secret | secret_file, events}} objects: {first}")
    })?;
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |e: String| format!("endpoint {}: {e}", i + 1);
            check_webhook_url(&r.url).map_err(at)?;
            if r.secret.is_some() && r.secret_file.is_some() {
                return Err(at("set either secret or secret_file, not both".into()));
            }
            if let Some(name) = &r.name {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !ok {
                    return Err(at(format!(
                        "name {name:?}: expected 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
                    )));
                }
            }
            let events = match &r.events {
                None => None,
                Some(names) => Some(event_kinds(names).map_err(at)?),
            };
            Ok(super::WebhookEndpointSpec {
                url: super::Secret::new(r.url),
                name: r.name,
                secret: r.secret.map(super::Secret::new),
                secret_file: r.secret_file,
                events,
            })
        })
        .collect()
}
