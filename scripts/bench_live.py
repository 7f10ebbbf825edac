"""Does ``predict --live`` keep up with a camera? Lag, CPU use and skipped windows, side by side
for 1 and 2 inference threads.

    python scripts/bench_live.py [--artifact <run>/export] [--seconds 60] [--threads 1 2] [--size 640x480] [--fps 30]

A motion video of ``--size`` at ``--fps`` (the generated textures moving, H.264; made once under
``data/bench_live/``, ``--cache``) is served by ``scripts/stream_video.py`` over TCP on 127.0.0.1 at its own
pace, looped, as a network camera sends it; ``python -m vidaccel_train.predict ARTIFACT --live
tcp://... --json --threads N`` reads it for ``--seconds`` after its first window and is then stopped as Ctrl-C stops it.
Each thread count runs in its own processes (server, predict and its reader), one after the other.
Printed per thread count: windows scored and skipped, lag p50/p95/max (from the arrival of a
window's last frame to its prediction, as predict measures it), CPU use of predict and its reader
together (percent of one core, from the kernel's accounting, from the first window on), frames
received and dropped, and the resident memory of predict and its reader at the first window and
at the end.
The last line:

    live <model> at <size> <fps> fps, stride <s> s: lag p95 A ms at 1 thread, B ms at 2 threads; keeps up: yes|no

"keeps up": at every thread count no window skipped, no frame dropped and lag p95 below one stride.
``--artifact`` defaults to the newest export under ``outputs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vidaccel_train.data.contract import ClipContract

ROOT = Path(__file__).resolve().parents[1]


def _newest_export() -> Path:
    exports = sorted(ROOT.glob("outputs/**/export/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not exports:
        raise SystemExit("error: no export under outputs/: train first, or give --artifact")
    return exports[-1].parent


def _video(cache: Path, width: int, height: int, fps: int, seconds: float) -> Path:
    """A video of moving textures, four motions in turn, made once."""
    import numpy as np

    from vidaccel_train.data.synthetic import SyntheticSpec, render_clip
    from vidaccel_train.data.video_io import write_video

    path = cache / f"motion_{width}x{height}_{fps}fps_{seconds:g}s.ts"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = SyntheticSpec(height=height, width=width, fps=fps, duration_s=2.0, speed=0.1, texture="sharp")
    rng = np.random.default_rng(0)
    motions = ["move_left", "rotate_cw", "approach", "move_down"]
    staged = path.with_suffix(".partial.ts")
    frames = []
    for i in range(max(1, math.ceil(seconds / spec.duration_s))):
        frames.extend(render_clip(spec, motions[i % len(motions)], rng))
    write_video(staged, frames, fps=fps)
    staged.replace(path)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) of process ``pid`` and its children so far (0 once gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for process in [str(pid), *children]:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def _rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` and its children, MiB (0 once gone)."""
    total = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for process in [str(pid), *children]:
            status = Path(f"/proc/{process}/status").read_text()
            total += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    except (FileNotFoundError, ProcessLookupError, AttributeError):
        pass
    return total / 1024


def run_one(artifact: Path, video: Path, threads: int, seconds: float, stride: float | None, loops: int) -> dict:
    """One thread count: its own server, predict --live for ``seconds``, then Ctrl-C."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "stream_video.py"), str(video), url, "--loop", str(loops)],
        stderr=subprocess.PIPE,
        text=True,
    )
    server.stderr.readline()  # "waiting for a reader"
    command = [sys.executable, "-m", "vidaccel_train.predict", str(artifact), "--live", url, "--json"]
    command += ["--threads", str(threads), "--reconnect", "0"] + (["--stride", str(stride)] if stride else [])
    with tempfile.NamedTemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        live = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + 120
        while not Path(out.name).read_text() and live.poll() is None:  # measured from the first window on
            if time.monotonic() > deadline:
                live.kill()
                break
            time.sleep(0.05)
        started, cpu_before, rss_before = time.monotonic(), _cpu_seconds(live.pid), _rss_mib(live.pid)
        while time.monotonic() - started < seconds and live.poll() is None:
            time.sleep(0.1)
        wall, cpu, rss_after = time.monotonic() - started, _cpu_seconds(live.pid) - cpu_before, _rss_mib(live.pid)
        if live.poll() is None:
            live.send_signal(signal.SIGINT)
        live.wait(timeout=60)
        out.seek(0)
        err.seek(0)
        lines, errors = out.read().splitlines(), err.read()
    server.kill()
    server.wait()
    if live.returncode != 0 or not lines:
        raise SystemExit(f"error: predict --live exited {live.returncode}:\n{errors[-3000:]}")
    summary = json.loads(lines[-1])["summary"]
    lags = sorted(json.loads(line)["lag_s"] for line in lines[:-1])
    return {
        "threads": threads,
        **summary,
        "lag_max_s": lags[-1] if lags else None,
        "cpu_percent": 100 * cpu / wall,
        "rss_first_mib": rss_before,
        "rss_last_mib": rss_after,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="an export folder (default: the newest under outputs/)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of stream per thread count (default: 60)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the source (default: 640x480)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--stride", type=float, help="seconds between windows (default: predict's, the clip's span)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "data" / "bench_live", help="where the source video is kept"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    artifact = args.artifact or _newest_export()
    manifest = json.loads(((artifact if artifact.is_dir() else artifact.parent) / "manifest.json").read_text())
    stride = args.stride or ClipContract.from_dict(manifest).span_s  # predict's default
    video_s = min(16.0, max(4.0, args.seconds))
    video = _video(args.cache, width, height, args.fps, video_s)
    loops = math.ceil((args.seconds + 120) / video_s)  # enough for a slow start: predict stops it
    print(f"source: {video.name} served over TCP at {args.fps} fps; model {manifest['model']} ({artifact})")
    print(
        f"{'threads':>7} {'windows':>7} {'skipped':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'CPU %':>6} {'frames':>7} {'dropped':>7}"
    )
    rows = []
    for threads in args.threads:
        row = run_one(artifact, video, threads, args.seconds, args.stride, loops)
        rows.append(row)
        ms = [None if row[k] is None else row[k] * 1000 for k in ("lag_p50_s", "lag_p95_s", "lag_max_s")]
        cells = " ".join(f"{'n/a' if v is None else f'{v:.0f}':>7}" for v in ms)
        print(
            f"{threads:>7} {row['windows']:>7} {row['skipped']:>7} {cells} {row['cpu_percent']:>6.0f} "
            f"{row['frames']:>7} {row['dropped']:>7} {row['rss_first_mib']:>6.0f}->{row['rss_last_mib']:<6.0f}",
            flush=True,
        )
    keeps_up = all(
        r["skipped"] == 0 and r["dropped"] == 0 and r["lag_p95_s"] is not None and r["lag_p95_s"] < stride for r in rows
    )
    if args.json:
        args.json.write_text(json.dumps({"model": manifest["model"], "stride_s": stride, "rows": rows}, indent=2))
    lags = ", ".join(
        ("n/a" if r["lag_p95_s"] is None else f"{r['lag_p95_s'] * 1000:.0f} ms")
        + f" at {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        for r in rows
    )
    print(
        f"live {manifest['model']} at {width}x{height} {args.fps} fps, stride {stride:.2f} s: lag p95 {lags}; "
        f"keeps up: {'yes' if keeps_up else 'no'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
