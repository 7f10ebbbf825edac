"""`predict --live` on real streams served on 127.0.0.1 by scripts/stream_video.py (MPEG-TS over
TCP, HTTP, UDP and a pipe, sent at the video's own pace): the same numbers as `predict
--timeline` on the same file, the label following the motion, drops survived, a slow consumer
skipping windows with flat memory, bad sources refused; on the smoke run's int8 program."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidaccel_train.data.contract import ClipContract
from vidaccel_train.data.live import LiveFeed, RollingWindows, live_source
from vidaccel_train.data.synthetic import SyntheticSpec, render_clip
from vidaccel_train.data.video_io import read_frames_at, write_video

from support.runs import predict_cli
from support.video_corpus import painted_frame, read_index

ROOT = Path(__file__).resolve().parents[1]
STREAMER = ROOT / "scripts" / "stream_video.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """scripts/stream_video.py in its own process: ``url`` serves ``video`` to one reader."""

    def __init__(self, video: Path, url: str, loops: int = 1):
        self.url = url
        self.process = subprocess.Popen(
            [sys.executable, str(STREAMER), str(video), url, "--loop", str(loops)],
            stderr=subprocess.PIPE,
            text=True,
        )
        if not url.startswith("udp://"):  # TCP and HTTP listen: wait until they do
            line = self.process.stderr.readline()
            assert line.startswith("waiting for a reader"), line + self.process.stderr.read()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stderr.close()


def _live(artifact, source: str, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vidaccel_train.predict", str(artifact), "--live", source, "--json", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _records(stdout: str) -> tuple[list[dict], dict]:
    *windows, summary = [json.loads(line) for line in stdout.splitlines()]
    return windows, summary["summary"]


@pytest.fixture(scope="module")
def artifact(smoke_run) -> Path:
    return smoke_run / "export" / "model_int8.pte"


@pytest.fixture(scope="module")
def spec(smoke_run) -> SyntheticSpec:
    run_config = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "run_config"
    ]
    synthetic = run_config["data"]["synthetic"]
    return SyntheticSpec(**{**synthetic, "classes": tuple(synthetic["classes"]), "duration_s": 1.2})


def _motion_video(spec: SyntheticSpec, path: Path, motions: list[str], seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    frames = [frame for motion in motions for frame in render_clip(spec, motion, rng)]
    write_video(path, frames, fps=spec.fps)
    return path


@pytest.fixture(scope="module")
def left_then_right(spec, tmp_path_factory) -> Path:
    """3.6 s moving left, then 3.6 s moving right, as MPEG-TS (what a network camera sends)."""
    return _motion_video(
        spec, tmp_path_factory.mktemp("live") / "left_then_right.ts", ["move_left"] * 3 + ["move_right"] * 3
    )


def test_a_stream_over_tcp_gives_the_timeline_of_the_same_file_window_by_window(artifact, left_then_right, tmp_path):
    """The file streamed in real time over a local socket: every window has the probabilities
    `predict --timeline` gives that window of the file; the label follows the motion; every
    prediction arrives within the lag budget (a window's span); nothing dropped, next to nothing
    skipped (the tiny model takes milliseconds a window; a loaded machine may skip one or two)."""
    stride = 0.2
    offline = predict_cli(
        artifact, left_then_right, "--timeline", "--stride", stride, "--out", tmp_path, "--topk", "4", "--json"
    )
    assert offline.returncode == 0, offline.stderr[-2000:]
    timeline = {w["start_s"]: {t["label"]: t["score"] for t in w["top"]} for w in json.loads(offline.stdout)["windows"]}

    port = _free_port()
    server = Server(left_then_right, f"tcp://127.0.0.1:{port}")
    try:
        live = _live(artifact, f"tcp://127.0.0.1:{port}", "--stride", stride, "--reconnect", 0, "--topk", 4)
        stdout, stderr = live.communicate(timeout=120)
    finally:
        server.stop()
    assert live.returncode == 0 and stderr == "", stderr[-2000:]
    windows, summary = _records(stdout)
    assert summary["windows"] + summary["skipped"] >= len(timeline) - 1 and len(windows) == summary["windows"]
    for window in windows:
        expected = timeline[round(window["start"], 3)]
        assert window["end"] == pytest.approx(window["start"] + 0.8, abs=1e-3)
        assert {p["label"]: p["score"] for p in window["predictions"]} == pytest.approx(expected, abs=1e-5)
    first = [w["predictions"][0]["label"] for w in windows if w["end"] <= 3.6]
    second = [w["predictions"][0]["label"] for w in windows if w["start"] >= 3.6]
    assert first.count("move_left") > len(first) / 2 and second.count("move_right") > len(second) / 2
    assert summary["skipped"] <= 2 and summary["dropped"] == 0 and summary["frames"] == 216
    assert summary["ended"] == "end of stream" and summary["lag_p95_s"] < 0.8


@pytest.mark.parametrize(
    "transport",
    [
        pytest.param("http", marks=pytest.mark.slow),
        pytest.param("udp", marks=pytest.mark.slow),
        "pipe",
        pytest.param("avi pipe", marks=pytest.mark.slow),
    ],
)
def test_http_udp_and_a_pipe_are_read_as_they_play(artifact, left_then_right, transport):
    """The same stream over HTTP, UDP (the reader listens first) and standard input (MPEG-TS, and
    AVI, whose frames carry no timestamps: the packets' are taken in order): windows from the
    start to the end of the stream, frames counted, a clean end, nothing on stderr."""
    port = _free_port()
    if transport.endswith("pipe"):
        container = "avi" if transport == "avi pipe" else "mpegts"
        producer = subprocess.Popen(
            [sys.executable, str(STREAMER), str(left_then_right), "-", "--format", container],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        live = _live(artifact, "-", "--stride", 0.4, stdin=producer.stdout)
        producer.stdout.close()
    elif transport == "udp":
        live = _live(artifact, f"udp://127.0.0.1:{port}", "--stride", 0.4, "--reconnect", 0)
        deadline = time.monotonic() + 60
        while f":{port:04X} " not in Path("/proc/net/udp").read_text():  # the reader is bound: send
            assert time.monotonic() < deadline and live.poll() is None, live.communicate()[1][-2000:]
            time.sleep(0.1)
        producer = Server(left_then_right, f"udp://127.0.0.1:{port}")
    else:
        producer = Server(left_then_right, f"http://127.0.0.1:{port}")
        live = _live(artifact, f"http://127.0.0.1:{port}", "--stride", 0.4, "--reconnect", 0)
    try:
        stdout, stderr = live.communicate(timeout=120)
    finally:
        if transport.endswith("pipe"):
            producer.kill()
            producer.wait()
        else:
            producer.stop()
    assert live.returncode == 0 and stderr == "", stderr[-2000:]
    windows, summary = _records(stdout)
    starts = [w["start"] for w in windows]
    assert starts[0] == 0.0 and all(round(s / 0.4, 6).is_integer() for s in starts) and windows[-1]["end"] >= 7.0
    assert summary["frames"] == 216 and summary["dropped"] == 0
    ended = {"udp": "nothing received for 5 s", "http": "read failed (Input/output error)"}
    assert summary["ended"] == ended.get(transport, "end of stream")


@pytest.mark.slow
def test_a_server_that_restarts_mid_stream_is_reopened(artifact, left_then_right):
    """The server dies mid-stream and comes back 1.5 s later: one warning line, one line when
    it is back, windows from both connections (the second on from where the wall clock is)."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = Server(left_then_right, url)
    live = _live(artifact, url, "--stride", 0.4, "--reconnect", 8)
    try:
        first = live.stdout.readline()
        assert first, live.stderr.read()
        server.stop()
        time.sleep(1.5)
        server = Server(left_then_right, url)
        stdout, stderr = live.communicate(timeout=120)
    finally:
        server.stop()
        live.kill()
    assert live.returncode == 0, stderr[-2000:]
    windows, summary = _records(first + stdout)
    lines = stderr.splitlines()
    assert len(lines) == 3 and lines[2] == lines[0] and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"warning: {url}: ") and lines[0].endswith("end of stream; reopening (for up to 8 s)")
    assert re.fullmatch(rf"{url}: back after \d+\.\d s", lines[1])
    assert summary["reopened"] == 1 and summary["ended"] == "end of stream; not back within 8 s"
    starts = [w["start"] for w in windows]
    assert starts == sorted(starts) and any(b - a > 1.0 for a, b in zip(starts, starts[1:]))  # the gap of the drop
    assert summary["frames"] > 216  # the second connection streamed the video from its start


def test_ctrl_c_ends_with_the_summary_and_no_reader_left(artifact, left_then_right):
    """SIGINT ends it with the summary, also when it started with SIGINT ignored (as a job started
    with `&` from a script does: Python then installs no KeyboardInterrupt), and the reader goes."""
    port = _free_port()
    server = Server(left_then_right, f"tcp://127.0.0.1:{port}", loops=10)
    ignored = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    live = _live(artifact, f"tcp://127.0.0.1:{port}", "--stride", 0.4, preexec_fn=ignored)
    try:
        for _ in range(3):
            assert live.stdout.readline()
        readers = Path(f"/proc/{live.pid}/task/{live.pid}/children").read_text().split()
        assert len(readers) == 1
        live.send_signal(signal.SIGINT)
        stdout, stderr = live.communicate(timeout=60)
    finally:
        server.stop()
    assert live.returncode == 0 and stderr == "", stderr
    windows, summary = _records(stdout)
    assert summary["ended"] == "interrupted" and summary["windows"] == 3 + len(windows) and summary["frames"] > 36
    deadline = time.monotonic() + 10
    while Path(f"/proc/{readers[0]}").exists():  # the reader ends with its pipe
        assert time.monotonic() < deadline, "the reader process outlived predict"
        time.sleep(0.1)


THROTTLED = """
import json, sys, time
from vidaccel_train.data.live import live_source
from vidaccel_train.predict import Predictor
from vidaccel_train.predict.live import LiveSummary, live_windows, open_feed

def rss_kib(pid):  # None once the process has ended (the reader goes when the stream does)
    return next((int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")), None)

predictor = Predictor(sys.argv[1])
summary, samples = LiveSummary(), []
with open_feed(predictor, live_source(sys.argv[2]), 1 / 30, reconnect_s=0) as feed:
    started = time.monotonic()
    for window in live_windows(predictor, feed, summary):
        time.sleep(0.25)  # a consumer slower than the windows come
        samples.append((time.monotonic() - started, rss_kib("self"), rss_kib(feed._process.pid)))
print(json.dumps({"summary": summary.record(), "samples": samples}))
"""


def test_a_slow_consumer_skips_windows_and_memory_stays_flat(artifact, left_then_right, tmp_path):
    """A window every frame, a consumer that takes 0.25 s for each: the newest window is
    handed over and the others counted as skipped, never queued: both processes' memory stays
    flat over 14 s of stream, and each window handed over is recent (lag under 0.5 s)."""
    port = _free_port()
    server = Server(left_then_right, f"tcp://127.0.0.1:{port}", loops=2)
    script = tmp_path / "throttled.py"
    script.write_text(textwrap.dedent(THROTTLED))
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(artifact), f"tcp://127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    summary, samples = result["summary"], result["samples"]
    assert summary["frames"] == 2 * 216 and summary["windows"] == len(samples)
    assert summary["skipped"] > 4 * summary["windows"]  # 30 windows a second made, 4 taken
    assert summary["windows"] + summary["skipped"] >= 2 * 216 - 30
    early = [s for s in samples if 3 < s[0] < 5]
    late = [s for s in samples[-12:] if s[2] is not None][-8:]
    assert early and late and late[-1][0] > 12, samples
    for column in (1, 2):  # predict, the reader
        assert max(s[column] for s in late) - max(s[column] for s in early) < 20_000, (column, early, late)
    assert summary["lag_p95_s"] < 0.5


@pytest.mark.parametrize(
    "source,message",
    [
        ("tcp://127.0.0.1:{port}", "cannot open (Connection refused)"),
        pytest.param("{tmp}/absent.ts", "no such file, device or URL", marks=pytest.mark.slow),
        ("{tmp}/notes.txt", "a text file, not a video"),
    ],
)
def test_a_source_that_cannot_be_opened_is_one_error_line(artifact, tmp_path, source, message):
    (tmp_path / "notes.txt").write_bytes(b"not a video\n" * 100)
    source = source.format(port=_free_port(), tmp=tmp_path)
    done = predict_cli(artifact, "--live", source)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: --live {source}: {message}\n"


def test_live_option_mistakes_are_one_error_line(artifact, left_then_right):
    for args, message in [
        (["--option", "rtsp_transport"], "--option takes KEY=VALUE"),
        (["--reconnect", "-1"], "--reconnect must be 0 or more"),
        (["--timeline"], "--live takes one source"),
    ]:
        done = predict_cli(artifact, "--live", left_then_right, *args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    for args, message in [
        ([left_then_right, "--live", left_then_right], "--live takes one source"),
        ([left_then_right, "--threads", "2", "--option", "a=b"], "--threads, --option: only with --live"),
    ]:
        done = predict_cli(artifact, *args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_rolling_windows_take_the_frame_shown_at_each_timestamp_as_the_file_reader_does(tmp_path):
    """Frames painted with their index, at uneven times with a gap (a dropped run of frames):
    the windows a recording gives through the live reader hold the frames `read_clip` returns for
    the same timestamps of the file, window by window."""
    times = [0.0]
    for i in range(1, 70):
        times.append(times[-1] + (0.1 if i == 30 else 1 / 30 + (0.01 if i % 3 == 0 else 0.0)))
    path = tmp_path / "painted.ts"
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"qp": "0", "bf": "0"}
        for index, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(painted_frame(index), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    clip = ClipContract(4, 2, 16, (16, 16), 16)  # a frame every 1/15 s, a window of 0.267 s
    with LiveFeed(live_source(str(path)), clip, 0.15) as feed:
        clips = list(feed.clips())
        stats = feed.stats
    assert stats.frames == 70 and stats.dropped == 2 and stats.skipped == 0
    assert len(clips) >= 12
    for got in clips:
        expected = read_frames_at(path, clip.timestamps(got.start_s))
        assert [read_index(f) for f in got.frames] == [read_index(f) for f in expected], got.start_s
    windows = RollingWindows(clip, 0.15, convert=lambda index: index)
    done = [w for i, t in enumerate(times) for w in windows.push(t, i, 0.0)] + windows.finish(times[-1] + 1 / 30)
    assert [[read_index(f) for f in c.frames] for c in clips] == [w.frames for w in done][: len(clips)]


def test_the_reader_process_decodes_without_torch():
    """The reader (`python -m vidaccel_train.data.live`) imports the clip contract and the decoder
    alone: no torch, torchvision or Lightning (memory and seconds of start on a small board),
    while the clips' datasets have them."""
    code = (
        "import sys, vidaccel_train.data.live, vidaccel_train.data.video_io, vidaccel_train.data.contract\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'lightning'})\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
    code = code.replace("vidaccel_train.data.contract\n", "vidaccel_train.data.contract, vidaccel_train.data.clips\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "torch,torchvision"  # the check can tell
