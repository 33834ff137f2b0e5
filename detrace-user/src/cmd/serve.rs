//! `detrace serve`: the node agent. The live pipeline on the kernel's flow table (no program
//! per packet unless asked), a ledger of
//! packets and drops per OVN and platform object (live/sinks/metrics/), and an HTTP endpoint
//! for Prometheus: `/metrics` and `/healthz`.
//!
//! The HTTP side is a thread of its own answering one request per connection from the last
//! published exposition: a scrape never waits for the pipeline nor touches it. Two GET routes
//! need no HTTP framework; requests are read with a size and time bound.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use super::live::{pipeline, run_live};
use crate::{
    cli::ServeArgs,
    live::sinks::metrics::{Ledger, MetricsSink, Published},
};

/// Longest request head read, and how long a client may take to send it.
const MAX_REQUEST: usize = 8192;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let every = Duration::from_secs_f64(args.interval.max(0.5));
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("listening on {} (--listen)", args.listen))?;
    let addr = listener.local_addr()?;
    let pipe = pipeline(&args.live, false)?;
    let published = Arc::new(Mutex::new(Published::default()));
    let shared = Arc::clone(&published);
    std::thread::Builder::new()
        .name("detrace-http".into())
        .spawn(move || serve_http(&listener, &shared, every))
        .context("starting the HTTP thread")?;
    eprintln!("detrace: metrics on http://{addr}/metrics (refreshed every {every:?})");
    let mut sink = MetricsSink {
        ledger: Ledger::default(),
        published,
    };
    // Always on: counts from the kernel's flow table by default (no program per packet),
    // latency only on a sample when asked.
    run_live(
        &args.live,
        None,
        args.count.counting(),
        pipe,
        &mut sink,
        Some(every),
    )
}

fn serve_http(listener: &TcpListener, published: &Mutex<Published>, every: Duration) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                if let Err(e) = answer(s, published, every) {
                    tracing::debug!("HTTP client: {e}");
                }
            }
            Err(e) => tracing::warn!("HTTP accept: {e}"),
        }
    }
}

/// The request's method and path, from its first line.
fn request_line(s: &mut TcpStream) -> std::io::Result<(String, String)> {
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    Ok((
        words.next().unwrap_or_default().to_string(),
        words.next().unwrap_or_default().to_string(),
    ))
}

fn answer(mut s: TcpStream, published: &Mutex<Published>, every: Duration) -> std::io::Result<()> {
    let (method, path) = request_line(&mut s)?;
    let path = path.split('?').next().unwrap_or_default();
    let (status, kind, body) = match (method.as_str(), path) {
        ("GET", "/metrics") => {
            let p = published
                .lock()
                .map_err(|_| std::io::Error::other("lock"))?;
            match p.at {
                Some(_) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    p.text.clone(),
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "no report yet: the probes are attaching\n".to_string(),
                ),
            }
        }
        ("GET", "/healthz") => health(published, every)?,
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// Healthy while reports keep coming (the pipeline is alive): at most three intervals old.
fn health(
    published: &Mutex<Published>,
    every: Duration,
) -> std::io::Result<(&'static str, &'static str, String)> {
    let p = published
        .lock()
        .map_err(|_| std::io::Error::other("lock"))?;
    Ok(match p.at.map(|t| t.elapsed()) {
        Some(age) if age <= every * 3 => ("200 OK", "text/plain", "ok\n".into()),
        Some(age) => (
            "503 Service Unavailable",
            "text/plain",
            format!("last report {age:?} ago (every {every:?})\n"),
        ),
        None => (
            "503 Service Unavailable",
            "text/plain",
            "starting: no report yet\n".into(),
        ),
    })
}
