//! `amesh-bench load`: the client side, run inside the client pod; one JSON line on stdout.
//!
//! - `tcp-pingpong` and `http1`: `--connections` keep-alive connections share a fixed
//!   aggregate `--rate`, each on its own thread and its own schedule (open loop). Latency is
//!   measured from the *scheduled* send time, so a slow answer that delays the next request
//!   shows in that request's latency too (no coordinated omission).
//! - `connect`: `--connections` threads each open a connection, exchange one byte, wait for
//!   the server to close and start over, as fast as they can (closed loop): connections/s.
//!
//! The first `--warmup` seconds run the same way but are not recorded.

use crate::{
    serve::{CONNECT, HTTP_REQUEST, PING, find},
    stats::percentile,
};
use anyhow::{Context, Result, bail};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// How long one exchange may take before it counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    TcpPingpong,
    Http1,
    Connect,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The server (`amesh-bench serve`).
    #[arg(long)]
    pub target: SocketAddr,
    /// Aggregate requests per second (ignored by `connect`).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Keep-alive connections, or concurrent connectors for `connect`.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
}

/// What one thread saw in the measured window.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| what.to_string());
    }
}

/// Runs the load and prints its result as one JSON line.
pub fn run(args: &LoadArgs) -> Result<()> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if args.connections == 0 || !positive(args.duration) || !positive(args.rate) {
        bail!("--connections, --duration and --rate must be positive");
    }
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let duration = Duration::from_secs_f64(args.duration);
    let tallies = match args.mode {
        Mode::Connect => connect_load(args.target, args.connections, warmup, duration),
        mode => keepalive_load(args, mode, warmup, duration)?,
    };
    let mut all = Tally::default();
    for t in tallies {
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    all.latencies_us.sort_unstable();
    println!("{}", summary(args.mode, &all, duration));
    Ok(())
}

fn summary(mode: Mode, t: &Tally, duration: Duration) -> serde_json::Value {
    let n = t.latencies_us.len();
    let p = |q| percentile(&t.latencies_us, q);
    serde_json::json!({
        "mode": format!("{mode:?}"),
        "requests": n,
        "errors": t.errors,
        "first_error": t.first_error,
        "seconds": duration.as_secs_f64(),
        "per_second": n as f64 / duration.as_secs_f64(),
        "p50_us": p(50.0),
        "p90_us": p(90.0),
        "p99_us": p(99.0),
        "max_us": t.latencies_us.last(),
    })
}

fn keepalive_load(
    args: &LoadArgs,
    mode: Mode,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<Tally>> {
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        let s = TcpStream::connect_timeout(&args.target, IO_TIMEOUT)
            .with_context(|| format!("connecting to {}", args.target))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        conns.push(s);
    }
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let stagger = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now() + Duration::from_millis(20);
    let measure = start + warmup;
    let end = measure + duration;
    let tallies = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let first = start + stagger * i as u32;
                s.spawn(move || {
                    let mut tally = Tally::default();
                    let mut exchange = Exchange::new(mode, conn);
                    let mut k = 0u32;
                    loop {
                        let at = first + interval * k;
                        if at >= end {
                            break;
                        }
                        k += 1;
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let result = exchange.once();
                        if at < measure {
                            continue;
                        }
                        match result {
                            Ok(()) => tally.latencies_us.push(micros(at.elapsed())),
                            Err(e) => {
                                tally.error(e);
                                break;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    Ok(tallies)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One keep-alive connection and what a request on it is.
struct Exchange {
    mode: Mode,
    conn: TcpStream,
    buf: Vec<u8>,
}

impl Exchange {
    fn new(mode: Mode, conn: TcpStream) -> Self {
        Self {
            mode,
            conn,
            buf: Vec::with_capacity(4096),
        }
    }

    fn once(&mut self) -> std::io::Result<()> {
        match self.mode {
            Mode::Http1 => self.http(),
            _ => {
                self.conn.write_all(&[PING])?;
                let mut b = [0u8; 1];
                self.conn.read_exact(&mut b)
            }
        }
    }

    /// Sends the GET and reads one whole response (headers, then Content-Length bytes).
    fn http(&mut self) -> std::io::Result<()> {
        self.conn.write_all(HTTP_REQUEST)?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(head) = find(&self.buf, b"\r\n\r\n") {
                let head = head + 4;
                let len = content_length(&self.buf[..head])?;
                if self.buf.len() >= head + len {
                    self.buf.drain(..head + len);
                    return Ok(());
                }
            }
            let n = self.conn.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("the server closed the connection"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The Content-Length of a response head; an error unless it is a 200 that has one.
fn content_length(head: &[u8]) -> std::io::Result<usize> {
    let text = String::from_utf8_lossy(head);
    if !text.starts_with("HTTP/1.1 200") {
        let status = text.lines().next().unwrap_or_default().to_string();
        return Err(std::io::Error::other(format!(
            "unexpected response: {status}"
        )));
    }
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| std::io::Error::other("response without Content-Length"))
}

fn connect_load(
    target: SocketAddr,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Vec<Tally> {
    let measure = Instant::now() + warmup;
    let end = measure + duration;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(move || {
                    let mut tally = Tally::default();
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let result = connect_once(target);
                        if t0 < measure {
                            continue;
                        }
                        match result {
                            Ok(()) => tally.latencies_us.push(micros(t0.elapsed())),
                            Err(e) => tally.error(e),
                        }
                    }
                    tally
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Connects, sends one byte, reads one back and waits for the server to close.
fn connect_once(target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[CONNECT])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    match s.read(&mut b)? {
        0 => Ok(()),
        _ => Err(std::io::Error::other("the server sent more than one byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_of_a_200() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n";
        assert_eq!(content_length(head).unwrap(), 1024);
        assert!(content_length(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").is_err());
        assert!(content_length(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    fn args(mode: Mode, target: SocketAddr) -> LoadArgs {
        LoadArgs {
            mode,
            target,
            rate: 400.0,
            connections: 2,
            duration: 0.3,
            warmup: 0.1,
        }
    }

    /// The three modes against the real server on loopback: every request answered, the
    /// open-loop schedule kept.
    #[test]
    fn every_mode_against_the_server() {
        let target = crate::serve::spawn_for_test();
        let window = Duration::from_secs_f64(0.3);
        for mode in [Mode::TcpPingpong, Mode::Http1] {
            let tallies = keepalive_load(
                &args(mode, target),
                mode,
                Duration::from_millis(100),
                window,
            )
            .unwrap();
            let n: usize = tallies.iter().map(|t| t.latencies_us.len()).sum();
            assert!(
                tallies.iter().all(|t| t.errors == 0),
                "{mode:?}: {tallies:?}"
            );
            // 400/s for 0.3 s: 120 scheduled sends, give or take the window's edges.
            assert!((110..=130).contains(&n), "{mode:?}: {n} requests");
        }
        let tallies = connect_load(target, 2, Duration::from_millis(50), window);
        assert!(tallies.iter().all(|t| t.errors == 0), "{tallies:?}");
        assert!(tallies.iter().map(|t| t.latencies_us.len()).sum::<usize>() > 10);
    }

    #[test]
    fn summary_reports_percentiles_and_rate() {
        let t = Tally {
            latencies_us: (1..=1000).collect(),
            errors: 0,
            first_error: None,
        };
        let v = summary(Mode::Http1, &t, Duration::from_secs(2));
        assert_eq!(v["requests"], 1000);
        assert_eq!(v["per_second"], 500.0);
        assert_eq!(v["p50_us"], 500);
        assert_eq!(v["p90_us"], 900);
        assert_eq!(v["p99_us"], 990);
        assert_eq!(v["max_us"], 1000);
    }
}
