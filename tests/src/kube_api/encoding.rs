//! How clients encode what they ask: percent-escaped query values, field selectors, and
//! JSON merge patches (RFC 7386).

use serde_json::{Value, json};

/// `%XX` escapes decoded (query values as clients send them).
pub(super) fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A field selector (`spec.nodeName=node1,metadata.name!=x`) against an object.
pub(super) fn fields_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want, equal) = match term.split_once("!=") {
            Some((p, v)) => (p, v, false),
            None => {
                let (p, v) = term.split_once('=').unwrap_or((term, ""));
                (p, v.trim_start_matches('='), true)
            }
        };
        let got = path
            .split('.')
            .fold(object, |o, k| &o[k])
            .as_str()
            .unwrap_or_default();
        (got == want) == equal
    })
}

pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in changes {
        if v.is_null() {
            if let Some(o) = target.as_object_mut() {
                o.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}
