//! Counting test results across cargo's many test binaries, so the run ends with one
//! `N passed, M failed` line.

use anyhow::{Context, Result};
use std::process::Command;

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    /// cargo itself exited successfully.
    pub ok: bool,
}

impl Tally {
    pub fn record(&mut self, passed: bool) {
        if passed {
            self.passed += 1
        } else {
            self.failed += 1
        }
    }

    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            match (
                words.next().and_then(|n| n.parse::<u64>().ok()),
                words.next(),
            ) {
                (Some(n), Some("passed")) => self.passed += n,
                (Some(n), Some("failed")) => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, echoing its output while counting results.
pub fn run_tests(c: &mut Command) -> Result<Tally> {
    use std::io::{BufRead, BufReader};
    println!("xtask: $ cargo test ...");
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut tally = Tally::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            tally.add_line(&line);
        }
    }
    tally.ok = child.wait()?.success();
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_sums_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.56s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        t.record(true);
        assert_eq!((t.passed, t.failed), (21, 2));
    }
}
