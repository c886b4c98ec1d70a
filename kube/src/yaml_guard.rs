//! A cheap look at YAML text before the parser sees it. libyaml's cost grows with the square
//! of flow nesting (`{a: {a: {a: ...`): 100 KB of it costs seconds of CPU before serde_yaml's
//! own depth limit (128) refuses it. This scan counts flow nesting in one linear pass and
//! refuses the text at the first line that goes deeper than [`MAX_FLOW_DEPTH`], so such a file
//! costs microseconds. It errs on the side of the parser: what it lets through the parser still
//! judges, and it only refuses nesting no Kubernetes object has (serde_yaml would refuse
//! anything past 128 anyway).

/// Deepest flow nesting (`[` / `{`) accepted. Below serde_yaml's limit of 128, so nothing it
/// could load is refused here.
pub const MAX_FLOW_DEPTH: usize = 100;

/// Text the scan refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow collections nested deeper than {MAX_FLOW_DEPTH} at line {line}")]
pub struct TooDeep {
    pub line: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Refuses text whose flow collections nest deeper than [`MAX_FLOW_DEPTH`].
pub fn check(text: &str) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut quote = Quote::None;
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block_scalar {
            // A literal/folded scalar's lines are text, whatever they hold.
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let (deepest, opens_block_scalar);
        (depth, deepest, quote, opens_block_scalar) = scan_line(line, depth, quote);
        if deepest > MAX_FLOW_DEPTH {
            return Err(TooDeep { line: n + 1 });
        }
        if opens_block_scalar && depth == 0 {
            block_scalar = Some(indent);
        }
    }
    Ok(())
}

/// Scans one line; returns the depth after it, the deepest it reached, the quoting after it,
/// and whether it ends with a block scalar indicator (`|`, `>`, with their modifiers).
fn scan_line(line: &str, mut depth: usize, mut quote: Quote) -> (usize, usize, Quote, bool) {
    let mut deepest = depth;
    let bytes = line.as_bytes();
    // Whether the next character may start a token (a flow indicator, a quote, a comment).
    let mut token_start = true;
    let mut last_token = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Quote::Single => {
                if c == b'\'' {
                    // '' is an escaped quote inside a single-quoted scalar.
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        quote = Quote::None;
                    }
                }
            }
            Quote::Double => match c {
                b'\\' => i += 1,
                b'"' => quote = Quote::None,
                _ => {}
            },
            Quote::None => {
                let in_flow = depth > 0;
                match c {
                    b'#' if token_start => break,
                    b'\'' if token_start => quote = Quote::Single,
                    b'"' if token_start => quote = Quote::Double,
                    // In flow context these are always indicators; in block context only
                    // where a token starts (`a[b` is a plain scalar).
                    b'[' | b'{' if in_flow || token_start => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b']' | b'}' if in_flow => depth -= 1,
                    _ => {}
                }
                if !c.is_ascii_whitespace() {
                    last_token = i;
                }
            }
        }
        token_start = matches!(c, b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-' | b'?')
            && quote == Quote::None;
        i += 1;
    }
    let tail = line[..bytes.len().min(last_token + 1)].trim_end();
    let last_word = tail.rsplit(' ').next().unwrap_or("");
    let block = quote == Quote::None
        && (last_word.starts_with('|') || last_word.starts_with('>'))
        && last_word[1..]
            .bytes()
            .all(|b| matches!(b, b'-' | b'+' | b'0'..=b'9'));
    (depth, deepest, quote, block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_at_its_line() {
        let text = format!("a: 1\nb: {}\n", "{a: ".repeat(25_000));
        assert_eq!(check(&text), Err(TooDeep { line: 2 }));
        assert!(check(&"[".repeat(100_000)).is_err());
    }

    #[test]
    fn ordinary_objects_pass() {
        let ok = [
            "metadata: {name: a, labels: {x: y}}\nspec:\n  rules: [{from: [{source: {namespaces: [a]}}]}]\n",
            "a: it's [not] a {flow}\nb: 'x[' \nc: \"{\\\"\"\n# [[[[ comment\n",
            "script: |\n  if [ -f x ]; then {\n  {{{{{{\nnext: {a: 1}\n",
            "args: [\"[\", '{', \"a]\"]\n",
        ];
        for text in ok {
            assert_eq!(check(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn nesting_up_to_the_limit_passes() {
        let at = format!(
            "{}{}",
            "[".repeat(MAX_FLOW_DEPTH),
            "]".repeat(MAX_FLOW_DEPTH)
        );
        assert_eq!(check(&at), Ok(()));
        let over = format!(
            "{}{}",
            "[".repeat(MAX_FLOW_DEPTH + 1),
            "]".repeat(MAX_FLOW_DEPTH + 1)
        );
        assert!(check(&over).is_err());
    }

    #[test]
    fn many_shallow_collections_pass() {
        let text = "- {a: [1, 2], b: {c: d}}\n".repeat(10_000);
        assert_eq!(check(&text), Ok(()));
    }
}
