//! A small client and server that tests run inside pods (see `amesh_testbed::probe`).
#![forbid(unsafe_code)]

use socket2::{Domain, Socket, Type};
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("connect") => connect(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("bulk") => bulk(&args[1..]),
        Some("pipe") => pipe(&args[1..]),
        Some("udp") => udp(&args[1..]),
        _ => Err("usage: amesh-probe connect [--mark N] [--bind IP] [--timeout-ms MS] TARGET... | serve [--echo] [--status N] [--delay-ms MS] --name NAME ADDR... | bulk --bytes N TARGET | udp [--connected] [--mark N] TARGET TEXT".into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("amesh-probe: {e}");
            ExitCode::from(2)
        }
    }
}

/// Sends one datagram to TARGET (with `connect()` first when `--connected`) and prints the
/// answer and the address it came from: `reply=<text> from=<addr>` (for a connected socket,
/// the address `recvfrom` reports too).
fn udp(args: &[String]) -> Result<bool, String> {
    let (mut connected, mut mark, mut rest) = (false, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connected" => connected = true,
            "--mark" => mark = Some(parse_u32(it.next().ok_or("--mark needs a value")?)?),
            _ => rest.push(a.clone()),
        }
    }
    let [target, text] = rest.as_slice() else {
        return Err("udp needs TARGET and TEXT".into());
    };
    let target: SocketAddr = target
        .parse()
        .map_err(|e| format!("target {target}: {e}"))?;
    let s =
        Socket::new(Domain::for_address(target), Type::DGRAM, None).map_err(|e| e.to_string())?;
    if let Some(m) = mark {
        s.set_mark(m).map_err(|e| format!("mark: {e}"))?;
    }
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let sock = std::net::UdpSocket::from(s);
    let sent = if connected {
        sock.connect(target).map_err(|e| format!("connect: {e}"))?;
        sock.send(text.as_bytes())
    } else {
        sock.send_to(text.as_bytes(), target)
    };
    sent.map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            println!(
                "reply={} from={from}",
                String::from_utf8_lossy(&buf[..n]).trim_end()
            );
            Ok(true)
        }
        Err(e) => {
            println!("error={e}");
            Ok(false)
        }
    }
}

struct ConnectOptions {
    mark: Option<u32>,
    bind: Option<IpAddr>,
    timeout: Duration,
}

fn connect(args: &[String]) -> Result<bool, String> {
    let mut opts = ConnectOptions {
        mark: None,
        bind: None,
        timeout: Duration::from_secs(5),
    };
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--mark" => opts.mark = Some(parse_u32(value()?)?),
            "--bind" => opts.bind = Some(value()?.parse().map_err(|e| format!("--bind: {e}"))?),
            "--timeout-ms" => opts.timeout = Duration::from_millis(u64::from(parse_u32(value()?)?)),
            t => targets.push(
                t.parse::<SocketAddr>()
                    .map_err(|e| format!("target {t}: {e}"))?,
            ),
        }
    }
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(|| one_connection(*t, &opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let mut out = std::io::stdout().lock();
    let mut all_ok = true;
    for (t, r) in targets.iter().zip(results) {
        let _ = match r {
            Ok(line) => writeln!(out, "target={t} {line}"),
            Err(e) => {
                all_ok = false;
                writeln!(out, "target={t} error={e}")
            }
        };
    }
    Ok(all_ok)
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))
}

fn one_connection(target: SocketAddr, opts: &ConnectOptions) -> Result<String, String> {
    let sock =
        Socket::new(Domain::for_address(target), Type::STREAM, None).map_err(|e| e.to_string())?;
    if let Some(mark) = opts.mark {
        sock.set_mark(mark).map_err(|e| format!("SO_MARK: {e}"))?;
    }
    if let Some(ip) = opts.bind {
        sock.bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| format!("bind: {e}"))?;
    }
    sock.connect_timeout(&target.into(), opts.timeout)
        .map_err(|e| e.to_string())?;
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(|e| e.to_string())?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    (&stream)
        .write_all(format!("{target}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| format!("reading reply: {e}"))?;
    if reply.is_empty() {
        return Err("connection closed without a reply".into());
    }
    Ok(format!(
        "local={local} peer={peer} reply={}",
        reply.trim_end()
    ))
}

fn serve(args: &[String]) -> Result<bool, String> {
    let mut name = "server".to_string();
    let mut echo = false;
    let mut http = HttpAnswer::default();
    let mut listeners = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--name" => name = it.next().ok_or("--name needs a value")?.clone(),
            "--echo" => echo = true,
            "--status" => {
                http.status = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--status needs a number")?;
            }
            "--delay-ms" => {
                http.delay_ms = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--delay-ms needs a number")?;
            }
            addr => {
                let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
                listeners.push(TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?);
            }
        }
    }
    println!("ready");
    std::thread::scope(|s| {
        for l in &listeners {
            let name = &name;
            s.spawn(move || {
                for conn in l.incoming().flatten() {
                    let name = name.clone();
                    if echo {
                        std::thread::spawn(move || echo_back(conn));
                    } else {
                        std::thread::spawn(move || answer(conn, &name, http));
                    }
                }
            });
        }
    });
    Ok(true)
}

/// How an HTTP request is answered: its status (200 unless `--status`), after a delay.
#[derive(Clone, Copy, Debug)]
struct HttpAnswer {
    status: u16,
    delay_ms: u64,
}

impl Default for HttpAnswer {
    fn default() -> Self {
        Self {
            status: 200,
            delay_ms: 0,
        }
    }
}

/// Answers one line with who served it; an HTTP/1.x request (e.g. from curl) gets the same
/// line as the body of its answer, with the `x-*` and `traceparent` headers it carried, its
/// `host` and its body (`body=...`, when it has a Content-Length).
fn answer(conn: TcpStream, name: &str, http: HttpAnswer) {
    let local = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    let _ = reader.read_line(&mut line);
    let mut body = format!("served-by={name} local={local} line={}", line.trim_end());
    if !line.trim_end().ends_with("HTTP/1.1") && !line.trim_end().ends_with("HTTP/1.0") {
        body.push('\n');
        let _ = (&conn).write_all(body.as_bytes());
        return;
    }
    // Read the headers up to the blank line; the ones a proxy adds are reported back.
    let mut header = String::new();
    let mut length = 0usize;
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        if let Some((k, v)) = header.trim_end().split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k.starts_with("x-") || k == "traceparent" || k == "host" {
                body.push_str(&format!(" {k}={}", v.trim()));
            }
            if k == "content-length" {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        header.clear();
    }
    // A request body (Content-Length only, at most 64 KiB) is read and reported as text.
    if length > 0 {
        let mut received = vec![0u8; length.min(64 * 1024)];
        if std::io::Read::read_exact(&mut reader, &mut received).is_ok() {
            body.push_str(&format!(" body={}", String::from_utf8_lossy(&received)));
        }
    }
    body.push('\n');
    std::thread::sleep(std::time::Duration::from_millis(http.delay_ms));
    let _ = (&conn).write_all(
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            http.status,
            if http.status == 200 { "OK" } else { "Answer" },
            body.len()
        )
        .as_bytes(),
    );
}

/// Sends everything back until the peer half-closes, then half-closes too.
fn echo_back(conn: TcpStream) {
    let _ = std::io::copy(&mut &conn, &mut &conn);
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// Deterministic bytes for a bulk transfer (xorshift), so both ends agree without storing it.
fn pattern(len: usize) -> impl Iterator<Item = u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    })
}

/// `bulk --bytes N TARGET`: sends N pattern bytes to an echo server, half-closes, and checks
/// that exactly the same N bytes come back. Prints `target=T bytes=N ok` or `... error=E`.
fn bulk(args: &[String]) -> Result<bool, String> {
    use std::io::Read;
    let (mut bytes, mut target) = (0usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bytes" => {
                bytes = it
                    .next()
                    .ok_or("--bytes needs a value")?
                    .parse()
                    .map_err(|e| format!("--bytes: {e}"))?
            }
            t => {
                target = Some(
                    t.parse::<SocketAddr>()
                        .map_err(|e| format!("target {t}: {e}"))?,
                )
            }
        }
    }
    let target = target.ok_or("bulk needs a target")?;
    let result = (|| -> Result<(), String> {
        let conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = conn.try_clone().map_err(|e| e.to_string())?;
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let mut w = std::io::BufWriter::with_capacity(256 * 1024, &writer);
            let mut chunk = Vec::with_capacity(64 * 1024);
            for b in pattern(bytes) {
                chunk.push(b);
                if chunk.len() == chunk.capacity() {
                    w.write_all(&chunk)?;
                    chunk.clear();
                }
            }
            w.write_all(&chunk)?;
            w.flush()?;
            drop(w);
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut expected = pattern(bytes);
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        let mut r = &conn;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| format!("after {got} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if Some(b) != expected.next() {
                    return Err(format!("byte {got} differs"));
                }
                got += 1;
            }
        }
        sender
            .join()
            .map_err(|_| "sender panicked".to_string())?
            .map_err(|e| format!("sending: {e}"))?;
        if got != bytes {
            return Err(format!("got {got} of {bytes} bytes back"));
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            println!("target={target} bytes={bytes} ok");
            Ok(true)
        }
        Err(e) => {
            println!("target={target} bytes={bytes} error={e}");
            Ok(false)
        }
    }
}

/// `pipe TARGET`: connects, prints `connected`, then sends stdin to the connection and prints
/// what comes back line by line; prints `closed` when the connection ends.
fn pipe(args: &[String]) -> Result<bool, String> {
    let target: SocketAddr = args
        .first()
        .ok_or("pipe needs a target")?
        .parse()
        .map_err(|e| format!("target: {e}"))?;
    let conn =
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    println!("connected");
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    for line in BufReader::new(&conn).lines() {
        match line {
            Ok(l) => println!("{l}"),
            Err(_) => break,
        }
    }
    println!("closed");
    Ok(true)
}
