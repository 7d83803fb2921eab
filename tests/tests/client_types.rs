//! The client library's files as the server serves them (`switchboard.js`, the ES module entry
//! `switchboard.mjs`, the declarations `switchboard.d.ts` / `.d.mts`) with their content
//! types, and the declarations keeping up with the JavaScript: every public method, static
//! helper, constructor option and event name of `switchboard.js` is declared. (`tsc` checks
//! the declarations themselves against a usage example: `tests/typescript.sh`.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use switchboard_e2e::http::get;
use switchboard_e2e::server::ServerOptions;

fn static_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../server/static")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The identifier at the start of `text` (`[A-Za-z0-9_$-]`, dashes for event names).
fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Every `ident` that follows `marker` in `text`.
fn after(text: &str, marker: &str) -> BTreeSet<String> {
    text.match_indices(marker)
        .map(|(i, _)| ident(&text[i + marker.len()..]).to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The public API of `switchboard.js`, read from its source.
struct JsApi {
    methods: BTreeSet<String>,
    statics: BTreeSet<String>,
    options: BTreeSet<String>,
    events: BTreeSet<String>,
}

fn js_api(js: &str) -> JsApi {
    // Methods of `class Switchboard`: lines indented by four spaces inside its body; a leading
    // `_` marks a private one.
    let start = js
        .find("class Switchboard extends EventTarget")
        .expect("class Switchboard");
    let end = js[start..]
        .find("\n  class Peer")
        .map_or(js.len(), |i| start + i);
    let methods = js[start..end]
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("    ")?;
            if line.starts_with(' ') {
                return None;
            }
            let line = line.strip_prefix("async ").unwrap_or(line);
            let name = ident(line);
            (line[name.len()..].starts_with('(') && !name.starts_with('_') && name != "constructor")
                .then(|| name.to_string())
        })
        .collect();
    let statics = after(js, "\n  Switchboard.");
    let options = after(js, "options.");
    let mut events = after(js, "._emit(\"");
    events.extend(after(js, "this._emit(\""));
    JsApi {
        methods,
        statics,
        options,
        events,
    }
}

#[test]
fn the_declarations_cover_the_whole_public_api_of_switchboard_js() {
    let js = static_file("switchboard.js");
    let dts = static_file("switchboard.d.ts");
    let api = js_api(&js);
    // The reading of the source must have found the API, or the test proves nothing.
    for (what, set, some) in [
        ("methods", &api.methods, "connect"),
        ("statics", &api.statics, "isInitiator"),
        ("options", &api.options, "refreshToken"),
        ("events", &api.events, "participant-left"),
    ] {
        assert!(
            set.contains(some),
            "no {some} among the {what} read: {set:?}"
        );
    }
    assert!(api.methods.len() >= 11, "{:?}", api.methods);
    assert!(api.events.len() >= 13, "{:?}", api.events);

    let mut missing = Vec::new();
    for m in &api.methods {
        if !dts.contains(&format!("  {m}(")) {
            missing.push(format!("method {m}()"));
        }
    }
    for s in &api.statics {
        if !dts.contains(&format!("static {s}(")) {
            missing.push(format!("static {s}()"));
        }
    }
    for o in &api.options {
        if !dts.contains(&format!("  {o}?:")) && !dts.contains(&format!("  {o}:")) {
            missing.push(format!("option {o}"));
        }
    }
    let details = dts
        .split("export interface SwitchboardEventDetails {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("interface SwitchboardEventDetails in the d.ts");
    for e in &api.events {
        let key = if e.contains('-') {
            format!("\"{e}\":")
        } else {
            format!("{e}:")
        };
        if !details.contains(&format!("  {key}")) {
            missing.push(format!("event {e}"));
        }
    }
    assert!(
        missing.is_empty(),
        "switchboard.d.ts lacks {missing:?} of switchboard.js"
    );
    // And nothing the JS does not have: every event declared is emitted.
    let declared: BTreeSet<String> = details
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("/**") && !l.starts_with('*') && l.contains(':'))
        .map(|l| ident(l.trim_start_matches('"')).to_string())
        .collect();
    assert_eq!(declared, api.events, "events declared vs emitted");
}

#[tokio::test]
async fn the_library_files_are_served_with_their_content_types() {
    let server = ServerOptions::with_secret("client-types-secret-0123456789abcdef").start();
    for (path, file, content_type) in [
        ("/switchboard.js", "switchboard.js", "text/javascript"),
        ("/switchboard.mjs", "switchboard.mjs", "text/javascript"),
        ("/switchboard.d.ts", "switchboard.d.ts", "text/plain"),
        ("/switchboard.d.mts", "switchboard.d.mts", "text/plain"),
    ] {
        let resp = get(server.addr(), path).await;
        assert_eq!(resp.status, 200, "{path}");
        let ct = resp.header("content-type").unwrap_or_default();
        assert!(ct.starts_with(content_type), "{path}: content-type {ct:?}");
        assert_eq!(
            resp.text(),
            static_file(file),
            "{path} is the file in server/static"
        );
    }
    // The module entry loads the classic script next to it, relative to its own URL.
    assert!(static_file("switchboard.mjs").contains("import \"./switchboard.js\";"));
}
