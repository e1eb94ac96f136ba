//! `alignsam run --serve` opened by a real browser: headless Chromium (Debian's `chromium`,
//! installed by .ci/setup) loads the page while `run` processes the demo images at 5 fps, and the
//! DOM it rendered shows frames arriving and the frame counter advancing. Without Chromium the
//! browser part says so and passes; the HTTP checks run everywhere.
#![cfg(all(feature = "cli", feature = "serve"))]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `run --serve 127.0.0.1:0` over the demo images, looping at 5 fps; the child and the address
/// it printed.
fn serve(extra: &[&str]) -> (Child, String, Arc<AtomicUsize>) {
    let mut child = common::alignsam()
        .arg("run")
        .arg("--bundle")
        .arg(common::tiny_bundle())
        .args(["--input"])
        .arg(common::root().join("demo/images"))
        .args([
            "--loop",
            "--fps",
            "5",
            "--steps",
            "2",
            "--serve",
            "127.0.0.1:0",
        ])
        .args(["--json", "-"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("run ended before serving").unwrap();
        if let Some(rest) = line.strip_prefix("live view at http://") {
            break rest.trim_end_matches('/').to_string();
        }
    };
    // Keep draining stderr so that the child never blocks on it, and count the JSON lines (one
    // per processed frame) on stdout.
    std::thread::spawn(move || for _ in lines {});
    let processed = Arc::new(AtomicUsize::new(0));
    let counter = processed.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for _ in BufReader::new(stdout).lines() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (child, addr, processed)
}

fn get(addr: &str, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Read the head, then exactly Content-Length bytes (as a browser does: no wait for the close).
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (head, body)
}

fn status(addr: &str) -> serde_json::Value {
    let (_, body) = get(addr, "/status");
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_page_the_status_and_the_frame_are_served_while_running() {
    let (mut child, addr, processed) = serve(&[]);
    let start = Instant::now();
    while status(&addr).get("frame").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no frame published"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = status(&addr)["seq"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = status(&addr);
    assert!(s["seq"].as_u64().unwrap() > first, "frames advance: {s}");
    for key in [
        "steps",
        "stop_reason",
        "ms",
        "latency_ms",
        "dropped_so_far",
        "fps",
    ] {
        assert!(s.get(key).is_some(), "{key} in {s}");
    }
    let (head, body) = get(&addr, "/frame.jpg");
    assert!(head.contains("image/jpeg"), "{head}");
    assert_eq!(&body[..2], b"\xff\xd8", "a JPEG");
    let (head, page) = get(&addr, "/");
    assert!(head.contains("text/html"), "{head}");
    assert!(String::from_utf8_lossy(&page).contains("alignsam live"));
    // Twenty viewers that ask for frames and never read them: processing goes on at its own
    // rate (the JSON lines on stdout count the processed frames).
    let rate = |ms: u64| {
        let before = processed.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(ms));
        processed.load(Ordering::Relaxed) - before
    };
    let alone = rate(2000);
    let stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let _ = write!(s, "GET /frame.jpg HTTP/1.1\r\nHost: x\r\n\r\n");
            s
        })
        .collect();
    let with_stalled = rate(2000);
    assert!(
        alone > 0 && 2 * with_stalled >= alone,
        "frames processed in 2 s: {alone} alone, {with_stalled} with 20 stalled viewers"
    );
    let s = status(&addr);
    assert!(s.get("frame").is_some(), "the server still answers: {s}");
    drop(stalled);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_real_browser_sees_frames_arrive_and_the_counter_advance() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok());
    let Some(chromium) = chromium else {
        eprintln!("skipped: no chromium (.ci/setup installs Debian's)");
        return;
    };
    let (mut child, addr, _) = serve(&[]);
    let dump = |budget_ms: u32| -> String {
        let o = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .arg("--dump-dom")
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let number = |dom: &str, id: &str| -> Option<u64> {
        let at = dom.find(&format!("id=\"{id}\">"))? + id.len() + 6;
        dom[at..].split('<').next()?.trim().parse().ok()
    };
    let first = dump(2500);
    std::thread::sleep(Duration::from_millis(1500));
    let second = dump(2500);
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = number(&first, "shown").unwrap_or(0);
    assert!(shown >= 2, "frames arrive in the browser: {first}");
    let (a, b) = (
        number(&first, "frame-index").expect("a frame index in the first page"),
        number(&second, "frame-index").expect("a frame index in the second page"),
    );
    assert!(b > a, "the frame counter advances: {a} then {b}");
    assert!(second.contains(">live<"), "{second}");
}
