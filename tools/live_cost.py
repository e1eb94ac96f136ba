#!/usr/bin/env python3
"""What recording (`--record`) and the live view (`--serve`) cost a running `alignsam run`.

Two measurements, standard library only (docs/performance.md has the figures and the commands):

  latency  frame-time p50 of alternating runs: plain, --record, and at --fps 10 plain against
           --serve with N viewers that do what the page does (GET /frame.jpg?after=SEQ on a
           kept-alive connection, /status five times a second)
  memory   resident memory of one long run, sampled from /proc: --record over many frames, or
           --serve with stalled viewers (each asks for a frame and never reads the answer)

The viewers run on the same machine as alignsam; with --viewer-nice they run at nice 19, standing
in for viewers on other machines (a browser on a laptop watching a board).

  python3 tools/live_cost.py latency --bundle models/small-sam --runs 3 --frames 30
  python3 tools/live_cost.py memory --bundle models/tiny --extra "--steps 1" --mode record --frames 10000
  python3 tools/live_cost.py memory --bundle models/small-sam --mode stalled --viewers 20 --frames 1000
  python3 tools/live_cost.py memory --bundle models/small-sam --mode plain --frames 1000
"""

import argparse
import http.client
import json
import shlex
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.environ.get("ALIGNSAM", "target/release/alignsam")


def viewer(port, stop, counts, i, nice):
    """The page's protocol on one kept-alive connection: the next frame, then /status when due."""
    if nice:
        # Linux: a thread's own niceness (alignsam, started by the main thread, keeps 0).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seq, next_status = 0, 0.0
    while not stop.is_set():
        try:
            conn.request("GET", f"/frame.jpg?after={seq}")
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                seq = int(r.getheader("X-Alignsam-Seq", seq))
                counts[i] += 1
            if time.monotonic() >= next_status:
                conn.request("GET", "/status")
                conn.getresponse().read()
                next_status = time.monotonic() + 0.2
            time.sleep(0.01)
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def stalled(port, sockets):
    """Asks for a frame and never reads: the server's write fills the socket and blocks."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /frame.jpg?after=0 HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
    sockets.append(s)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run(args, extra, viewers=0, stalled_viewers=0, nice=False, sample=False):
    """One run; returns (summary dict, viewer frame counts, [(frames done, rss kB)])."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        json_path = os.path.join(tmp, "frames.jsonl")
        cmd = [BIN, "run", "-q", "--bundle", args.bundle, "--input", args.input, "--loop",
               "--max-frames", str(args.frames), "--out", out, "--json", json_path] + shlex.split(args.extra) + extra
        port = None
        if viewers or stalled_viewers:
            port = free_port()
            cmd += ["--serve", f"127.0.0.1:{port}"]
        if "--record" in extra:
            cmd[cmd.index("--record") + 1] = os.path.join(tmp, "rec.mcap")
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        stop, counts, threads, sockets = threading.Event(), [0] * viewers, [], []
        if port:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            for i in range(viewers):
                t = threading.Thread(target=viewer, args=(port, stop, counts, i, nice), daemon=True)
                t.start()
                threads.append(t)
            for _ in range(stalled_viewers):
                stalled(port, sockets)
        samples = []
        while p.poll() is None:
            if sample:
                done = sum(1 for _ in open(json_path)) if os.path.exists(json_path) else 0
                kb = rss_kb(p.pid)
                if kb:
                    samples.append((done, kb))
            time.sleep(0.5)
        stop.set()
        err = p.stderr.read()
        for s in sockets:
            s.close()
        if p.returncode != 0:
            sys.exit(f"alignsam failed ({p.returncode}): {err}")
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        # The exact median of the frames' processing times (the summary's p50 comes from a
        # histogram whose buckets are about 2% wide: too coarse for a 3% target).
        with open(json_path) as f:
            times = sorted(json.loads(line)["ms"]["total_ms"] for line in f if line.strip())
        summary["frame_p50_ms"] = statistics.median(times)
        return summary, counts, samples


def latency(args):
    modes = [("plain", [], 0), ("record", ["--record", "REC"], 0),
             ("plain 10 fps", ["--fps", "10"], 0), (f"serve, {args.viewers} viewers, 10 fps", ["--fps", "10"], args.viewers)]
    wanted = set(args.modes.split(","))
    modes = [m for m, key in zip(modes, ["plain", "record", "plain-fps", "serve"]) if key in wanted]
    results = {m[0]: [] for m in modes}
    shown = []
    for r in range(args.runs):
        for name, extra, viewers in modes:
            summary, counts, _ = run(args, extra, viewers=viewers, nice=args.viewer_nice)
            results[name].append(summary["frame_p50_ms"])
            if viewers:
                shown.append(counts)
            print(f"run {r + 1} {name}: frame p50 {summary['frame_p50_ms']:.1f} ms, "
                  f"{summary['frames_processed']} processed" + (f", frames shown per viewer {counts}" if viewers else ""),
                  flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print("\nmedian frame p50:")
    for k, v in med.items():
        print(f"  {k}: {v:.1f} ms")
    if "record" in med and "plain" in med:
        print(f"record / plain: {med['record'] / med['plain']:.3f}")
    serve = [k for k in med if k.startswith("serve")]
    if serve and "plain 10 fps" in med:
        print(f"serve / plain at 10 fps: {med[serve[0]] / med['plain 10 fps']:.3f}")


def memory(args):
    extra = ["--record", "REC"] if args.mode == "record" else ["--fps", str(args.fps)] if args.fps else []
    summary, _, samples = run(args, extra, stalled_viewers=args.viewers if args.mode == "stalled" else 0, sample=True)
    if not samples:
        sys.exit("no samples")
    n = summary["frames_processed"]
    early = [kb for done, kb in samples if done >= n * 0.1]
    base = early[0] if early else samples[0][1]
    late = [kb for done, kb in samples if done >= n * 0.5]
    peak = max(late) if late else samples[-1][1]
    print(f"{args.mode}: {n} frames processed, frame p50 {summary['frame_p50_ms']:.1f} ms")
    print(f"RSS at 10% of the frames {base / 1024:.1f} MiB, highest over the second half {peak / 1024:.1f} MiB: "
          f"{100 * (peak / base - 1):+.1f}%")
    for q in (0.1, 0.25, 0.5, 0.75, 1.0):
        at = [kb for done, kb in samples if done >= n * q]
        if at:
            print(f"  at {int(q * 100)}%: {at[0] / 1024:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("latency", "memory"):
        s = sub.add_parser(name)
        s.add_argument("--bundle", default="models/small-sam")
        s.add_argument("--input", default="demo/images")
        s.add_argument("--frames", type=int, default=30)
        s.add_argument("--viewers", type=int, default=3)
        s.add_argument("--viewer-nice", action="store_true",
                       help="run the viewers at nice 19 (standing in for viewers on other machines)")
        s.add_argument("--extra", default="", help="more options for `alignsam run`, as one string")
        if name == "latency":
            s.add_argument("--runs", type=int, default=3)
            s.add_argument("--modes", default="plain,record,plain-fps,serve",
                           help="which runs, of plain,record,plain-fps,serve")
        else:
            s.add_argument("--mode", choices=["plain", "record", "stalled"], required=True)
            s.add_argument("--fps", type=float, default=None)
    args = ap.parse_args()
    latency(args) if args.what == "latency" else memory(args)


if __name__ == "__main__":
    main()
