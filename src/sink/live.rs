//! The live view of a running `alignsam run --serve`: a page (built into the binary, no CDN, no
//! framework) that shows the latest frame with its mask overlay, points, labels and step
//! numbers, and the frame's record (stop reason, stage times, fps, drops, capture-to-result
//! latency); plus `/status`, the same record as JSON.
//!
//! Transport: the page asks for `/frame.jpg?after=SEQ` each time the previous frame has loaded
//! (SEQ: the last frame it showed); the request waits until a newer frame is published (at most
//! [`LONG_POLL`], then the current one), so a viewer gets each new frame once and no request is
//! spent on a frame it already has. A viewer is never sent a frame it has not asked for: a slow
//! or stalled viewer simply asks less often and the server holds nothing for it (no per-viewer
//! queue to bound), every viewer always gets the newest frame (drop-oldest by construction), and
//! processing only hands over the frame it already has. The overlay and the JPEG are made on a
//! request thread, one frame at a time and once per frame whatever the number of viewers. At
//! most [`MAX_REQUESTS`] requests are served at once (one thread each; more get 503); a viewer's
//! error ends its request only. `/status` is polled five times a second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use image::RgbImage;

use crate::agent::PointRecord;

/// Requests served at once; more are answered 503.
pub const MAX_REQUESTS: usize = 16;
/// How long a `/frame.jpg?after=SEQ` request waits for a newer frame.
pub const LONG_POLL: Duration = Duration::from_secs(2);
const PAGE: &str = include_str!("live.html");

/// One published frame: what the page shows.
struct Latest {
    seq: u64,
    image: Option<Arc<RgbImage>>,
    mask: Arc<Vec<bool>>,
    points: Arc<Vec<PointRecord>>,
    status: Arc<String>,
    jpeg: Option<Encoded>,
    published: Option<Instant>,
    fps: f64,
}

/// A frame as sent: the JPEG and the record of that same frame.
#[derive(Clone)]
struct Encoded {
    seq: u64,
    bytes: Arc<Vec<u8>>,
    status: Arc<String>,
}

struct Shared {
    latest: Mutex<Latest>,
    /// Signalled on every publish: wakes the requests waiting for a newer frame.
    published: Condvar,
    /// Held while a frame is encoded, so that concurrent viewers wait for the one encoding
    /// rather than each making their own.
    encoding: Mutex<()>,
    busy: AtomicUsize,
    stop: AtomicBool,
}

/// The live-view server; stops when dropped or with [`LiveServer::stop`].
pub struct LiveServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl LiveServer {
    /// Listens on `addr` (`127.0.0.1:8080`; another interface only when the user names one).
    pub fn start(addr: &str) -> Result<Self> {
        let server =
            tiny_http::Server::http(addr).map_err(|e| anyhow!("{addr}: cannot listen: {e}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("{addr}: not an IP address"))?;
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest {
                seq: 0,
                image: None,
                mask: Arc::new(vec![]),
                points: Arc::new(vec![]),
                status: Arc::new("{}".into()),
                jpeg: None,
                published: None,
                fps: 0.0,
            }),
            published: Condvar::new(),
            encoding: Mutex::new(()),
            busy: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("live-view".into())
            .spawn(move || accept(server, s))?;
        Ok(LiveServer {
            shared,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hands over the newest frame and its record (a JSON object); cheap: the overlay and the
    /// JPEG are made when a viewer asks.
    pub fn publish(
        &self,
        image: Arc<RgbImage>,
        mask: Vec<bool>,
        points: Vec<PointRecord>,
        mut status: serde_json::Value,
    ) {
        let mut l = lock(&self.shared);
        let now = Instant::now();
        if let Some(prev) = l.published {
            let dt = now.duration_since(prev).as_secs_f64().max(1e-6);
            // A smoothed frame rate over about the last ten frames.
            l.fps = if l.fps == 0.0 {
                1.0 / dt
            } else {
                0.9 * l.fps + 0.1 / dt
            };
        }
        l.published = Some(now);
        l.seq += 1;
        if let Some(o) = status.as_object_mut() {
            o.insert("fps".into(), l.fps.into());
            o.insert("seq".into(), l.seq.into());
            o.insert(
                "viewers_busy".into(),
                self.shared.busy.load(Ordering::Relaxed).into(),
            );
        }
        l.status = Arc::new(status.to_string());
        l.image = Some(image);
        l.mask = Arc::new(mask);
        l.points = Arc::new(points);
        drop(l);
        self.shared.published.notify_all();
    }

    /// Stops listening and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.published.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Latest> {
    s.latest.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept(server: tiny_http::Server, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("live view: {e}");
                continue;
            }
        };
        if shared.busy.fetch_add(1, Ordering::AcqRel) >= MAX_REQUESTS {
            shared.busy.fetch_sub(1, Ordering::AcqRel);
            let _ = request.respond(tiny_http::Response::empty(503));
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("live-view-request".into())
            .spawn(move || {
                if let Err(e) = answer(request, &s) {
                    log::debug!("live view: a viewer went away: {e}");
                }
                s.busy.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn answer(request: tiny_http::Request, shared: &Shared) -> std::io::Result<()> {
    let path = request.url().split('?').next().unwrap_or("/").to_string();
    let no_store = header("Cache-Control", "no-store");
    match path.as_str() {
        "/" | "/index.html" => request.respond(
            tiny_http::Response::from_string(PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8"))
                .with_header(no_store),
        ),
        "/status" => {
            let status = lock(shared).status.clone();
            request.respond(
                tiny_http::Response::from_string(status.as_str())
                    .with_header(header("Content-Type", "application/json"))
                    .with_header(no_store),
            )
        }
        "/frame.jpg" => match after(request.url()).map_or_else(
            || jpeg(shared),
            |seq| {
                wait_newer(shared, seq);
                jpeg(shared)
            },
        ) {
            // The frame's own record rides along, so that the page never shows one frame's
            // points beside another frame's picture.
            Some(e) => request.respond(
                tiny_http::Response::from_data(e.bytes.as_slice())
                    .with_header(header("Content-Type", "image/jpeg"))
                    .with_header(header("X-Alignsam-Status", &ascii_json(&e.status)))
                    .with_header(header("X-Alignsam-Seq", &e.seq.to_string()))
                    .with_header(no_store)
                    // A plain Content-Length, not chunks: the size is known.
                    .with_chunked_threshold(usize::MAX),
            ),
            None => request.respond(tiny_http::Response::empty(204)),
        },
        _ => request.respond(tiny_http::Response::empty(404)),
    }
}

/// JSON with every non-ASCII character escaped, so that it fits in an HTTP header.
fn ascii_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The newest frame's JPEG when it has been made already.
fn cached(shared: &Shared) -> Option<Encoded> {
    let l = lock(shared);
    l.jpeg.as_ref().filter(|e| e.seq == l.seq).cloned()
}

/// The `after=SEQ` of a frame request's query.
fn after(url: &str) -> Option<u64> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .and_then(|v| v.parse().ok())
}

/// Waits until a frame newer than `seq` is published, the server stops, or [`LONG_POLL`] ends.
fn wait_newer(shared: &Shared, seq: u64) {
    let deadline = Instant::now() + LONG_POLL;
    let mut l = lock(shared);
    while l.seq <= seq && !shared.stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        l = shared
            .published
            .wait_timeout(l, left.min(Duration::from_millis(200)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// What a viewer is sent: the frame with its overlay (when the mask fits it), as JPEG at quality
/// 80. `None` for a frame over 65535 pixels a side, which JPEG cannot hold.
///
/// jpeg-encoder (AVX2 where the CPU has it) is about 4x faster than the `image` crate's encoder
/// here, and the encoding shares the cores with processing (docs/performance.md; `cargo run
/// --release --example view_cost`).
pub fn view_jpeg(image: &RgbImage, mask: &[bool], points: &[PointRecord]) -> Option<Vec<u8>> {
    let shown = if mask.len() == (image.width() * image.height()) as usize {
        super::overlay(image, mask, points)
    } else {
        image.clone()
    };
    let (w, h) = (
        shown.width().try_into().ok()?,
        shown.height().try_into().ok()?,
    );
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 80)
        .encode(shown.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
        .ok()?;
    Some(bytes)
}

/// The newest frame as JPEG with its overlay, made once per frame.
fn jpeg(shared: &Shared) -> Option<Encoded> {
    if let Some(e) = cached(shared) {
        return Some(e);
    }
    // One encoder at a time: a viewer that arrives while the frame is being encoded waits for
    // it and then finds it cached.
    let _encoding = shared.encoding.lock().unwrap_or_else(|p| p.into_inner());
    let (seq, image, mask, points, status) = {
        let l = lock(shared);
        if let Some(e) = &l.jpeg
            && e.seq == l.seq
        {
            return Some(e.clone());
        }
        let image = l.image.clone()?;
        (
            l.seq,
            image,
            l.mask.clone(),
            l.points.clone(),
            l.status.clone(),
        )
    };
    let bytes = view_jpeg(&image, &mask, &points)?;
    let encoded = Encoded {
        seq,
        bytes: Arc::new(bytes),
        status,
    };
    let mut l = lock(shared);
    if l.jpeg.as_ref().is_none_or(|e| e.seq < seq) {
        l.jpeg = Some(encoded.clone());
    }
    Some(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A GET over a fresh connection: (status line, headers and body as text-lossy bytes).
    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![];
        c.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.lines().next().unwrap_or_default().to_string();
        (status, text)
    }

    fn publish(server: &LiveServer, value: u8) {
        let image = Arc::new(RgbImage::from_pixel(8, 6, image::Rgb([value, 0, 0])));
        server.publish(
            image,
            vec![false; 48],
            vec![],
            serde_json::json!({"v": value}),
        );
    }

    #[test]
    fn a_frame_request_waits_for_a_newer_frame_and_names_it() {
        let server = LiveServer::start("127.0.0.1:0").unwrap();
        let addr = server.addr();
        // Nothing published yet: no content, at once.
        assert!(get(addr, "/frame.jpg").0.contains("204"));
        publish(&server, 1);
        let (status, text) = get(addr, "/frame.jpg?after=0");
        assert!(status.contains("200"), "{status}");
        assert!(
            text.to_ascii_lowercase().contains("x-alignsam-seq: 1"),
            "{text:.300}"
        );
        // after=1: answered only when frame 2 exists.
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            let (_, text) = get(addr, "/frame.jpg?after=1");
            (start.elapsed(), text)
        });
        std::thread::sleep(Duration::from_millis(300));
        publish(&server, 2);
        let (waited, text) = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < LONG_POLL, "{waited:?}");
        assert!(
            text.to_ascii_lowercase().contains("x-alignsam-seq: 2"),
            "{text:.300}"
        );
        server.stop();
    }

    #[test]
    fn the_query_is_read_leniently() {
        assert_eq!(after("/frame.jpg?after=12"), Some(12));
        assert_eq!(after("/frame.jpg?x=1&after=3"), Some(3));
        assert_eq!(after("/frame.jpg?after=-1"), None);
        assert_eq!(after("/frame.jpg"), None);
    }
}
