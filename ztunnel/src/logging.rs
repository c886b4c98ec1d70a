//! Changing the log level at run time (the admin endpoint's `/logging`), with Istio
//! ztunnel's semantics: `level` is a comma list of `<level>` (the default for every target)
//! and `<target>:<level>` clauses, levels being `off|error|warn|info|debug|trace`; each
//! clause is added to the current filter (replacing the one for the same target), `reset`
//! goes back to the filter ztunnel started with. Anything else is refused and the filter is
//! left as it was: a typo must not turn every log off, access logs included (which is what
//! handing `inof` or an empty string to `EnvFilter` does).

use tracing_subscriber::{EnvFilter, filter::Directive};

/// The levels a clause may name, as Istio's ztunnel accepts them.
pub const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// What `/logging` accepts, for error answers.
pub const HELP: &str = "usage: GET /logging                                   (the current level)\n\
usage: POST /logging?level=<level>                     (the default level)\n\
usage: POST /logging?level=<target>:<level>[,...]      (the level of targets, e.g. access:warn)\n\
usage: POST /logging?reset                             (back to the level ztunnel started with)\n\
levels: off|error|warn|info|debug|trace\n";

/// Why a level was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    #[error("no level given")]
    Empty,
    #[error("{0:?} is not a valid level (valid levels: off, error, warn, info, debug, trace)")]
    UnknownLevel(String),
    #[error("{0:?} uses `=`: write <target>:<level> instead")]
    Equals(String),
    #[error("{0:?} is not a valid target (letters, digits, `_`, `-`, `.` and `::` only)")]
    BadTarget(String),
    #[error("the filter {filter:?} does not parse: {reason}")]
    Filter { filter: String, reason: String },
    #[error("the logger refused the new filter: {0}")]
    Reload(String),
}

impl LogLevelError {
    /// Whether the request was at fault (400) rather than ztunnel (503).
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, Self::Reload(_))
    }
}

/// The handle the log filter is reloaded through.
pub type LogHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The running log filter: what it is, what it was at start, and how to change it.
#[derive(Debug)]
pub struct LogControl {
    handle: LogHandle,
    initial: String,
}

impl LogControl {
    /// `initial` is the filter the handle started with (what `reset` returns to).
    pub fn new(handle: LogHandle, initial: String) -> Self {
        Self { handle, initial }
    }

    /// The filter in effect, as `EnvFilter` directives.
    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Applies `spec` (see the module) on top of the current filter, or of the initial one
    /// when `reset`; an empty `spec` is allowed only with `reset`. Returns the new filter.
    /// Nothing changes unless every clause is valid.
    pub fn set(&self, spec: &str, reset: bool) -> Result<String, LogLevelError> {
        let directives = if spec.is_empty() && reset {
            Vec::new()
        } else {
            parse(spec)?
        };
        let base = if reset {
            self.initial.clone()
        } else {
            self.current()
        };
        let filter = build(&base, directives)?;
        let shown = filter.to_string();
        self.handle
            .reload(filter)
            .map_err(|e| LogLevelError::Reload(e.to_string()))?;
        Ok(shown)
    }
}

/// `base` with `directives` added (each replaces the one for the same target).
fn build(base: &str, directives: Vec<Directive>) -> Result<EnvFilter, LogLevelError> {
    let mut filter = EnvFilter::try_new(base).map_err(|e| LogLevelError::Filter {
        filter: base.to_string(),
        reason: e.to_string(),
    })?;
    for d in directives {
        filter = filter.add_directive(d);
    }
    Ok(filter)
}

/// Parses Istio's `level` syntax into filter directives.
fn parse(spec: &str) -> Result<Vec<Directive>, LogLevelError> {
    if spec.trim().is_empty() {
        return Err(LogLevelError::Empty);
    }
    spec.split(',').map(clause).collect()
}

fn clause(clause: &str) -> Result<Directive, LogLevelError> {
    if clause.contains('=') {
        return Err(LogLevelError::Equals(clause.to_string()));
    }
    // The level is after the last `:`, so module paths (`amesh_ztunnel::proxy:debug`) work.
    let (target, level) = match clause.rsplit_once(':') {
        Some((target, level)) => (Some(target), level),
        None => (None, clause),
    };
    if !LEVELS.contains(&level) {
        return Err(LogLevelError::UnknownLevel(level.to_string()));
    }
    let text = match target {
        None => level.to_string(),
        Some(t) if valid_target(t) => format!("{t}={level}"),
        Some(t) => return Err(LogLevelError::BadTarget(t.to_string())),
    };
    text.parse().map_err(
        |e: tracing_subscriber::filter::ParseError| LogLevelError::Filter {
            filter: text.clone(),
            reason: e.to_string(),
        },
    )
}

/// A target as `tracing` names them: a module path or a plain name (e.g. `access`).
fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && t.split("::").all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
}

/// Decodes a query value (`%XX` escapes, `+` as space); `None` if an escape is malformed or
/// the result is not UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(spec: &str) -> Result<String, LogLevelError> {
        let ds = parse(spec)?;
        Ok(build("info", ds)?.to_string())
    }

    #[test]
    fn levels_and_target_clauses_as_istio_accepts_them() {
        assert_eq!(parsed("debug").unwrap(), "debug");
        assert_eq!(parsed("access:warn").unwrap(), "access=warn,info");
        let paths = parsed("amesh_ztunnel::proxy:trace,off").unwrap();
        assert!(
            paths.contains("amesh_ztunnel::proxy=trace") && paths.contains("off"),
            "{paths}"
        );
        // A clause for a target already in the filter replaces it.
        let twice = build("info,access=warn", parse("access:debug").unwrap()).unwrap();
        assert_eq!(twice.to_string(), "access=debug,info");
    }

    #[test]
    fn typos_and_filter_syntax_are_refused_with_the_reason() {
        for (spec, want) in [
            ("inof", "not a valid level"),
            ("", "no level"),
            ("INFO", "not a valid level"),
            ("info,debg", "\"debg\" is not a valid level"),
            ("access=warn", "write <target>:<level>"),
            ("[nonsense:info", "not a valid target"),
            (":info", "not a valid target"),
            ("access:", "not a valid level"),
        ] {
            let err = parsed(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
        assert!(
            LogLevelError::UnknownLevel("x".into())
                .to_string()
                .contains("off, error, warn, info, debug, trace")
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("access%3Awarn,info").as_deref(),
            Some("access:warn,info")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
