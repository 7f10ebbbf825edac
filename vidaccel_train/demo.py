"""A local web page that classifies videos with an exported artifact.

    python -m vidaccel_train.demo <run>/export              # or a .pte of an export folder
    python -m vidaccel_train.demo <run>/export --port 8080 --examples clips/

Upload a video (or pick one of --examples): the page plays it upright, shows the top-5 classes
for the whole video with their probabilities (predict's numbers: the same code, the manifest's
test views), a plot of the classes over time for videos longer than two clips, the model's card
(classes, input clip, accuracy and latency from the manifest, sha256) and how long this
prediction took.

The Camera tab streams the browser's webcam to this server (a frame every
:data:`CAMERA_FRAME_S` seconds at most; the browser asks for permission, and allows cameras
only on http://127.0.0.1, http://localhost or https): windows of the model's clip every half a
clip (--stride), each timestamp taking the last frame received at or before it (``predict
--live``'s rule, on the frames' arrival times: the browser sends no timestamps), the
newest window's top-5, a rolling plot of the last :data:`CAMERA_HISTORY` windows and a line
with the window's times, the frames received a second and the model's time.

Nothing leaves the machine: the page is served from this process on 127.0.0.1 (--host to serve
it on other interfaces), with the fonts of the system, no analytics, no version check and no
share link. The player is given an upright H.264 copy made with PyAV through the project's
reader (no ffmpeg program is needed); its sound is left out.

A file that is not a video shows one error line in the page, which goes on working. A missing
or modified artifact, or an unknown option: one error line, exit code 2, before the server starts.
Needs the optional ``demo`` dependencies: ``pip install -e '.[demo]'`` (``bash scripts/setup.sh demo``).
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vidaccel_train.cli import report_user_error, run_command
from vidaccel_train.errors import PredictError, VideoDecodeError
from vidaccel_train.export.manifest import LAYOUT, ArtifactRecord, Manifest

log = logging.getLogger("vidaccel_train.demo")

TOPK = 5
# The timeline's windows overlap by half a clip, up to this many windows; longer videos get a
# wider stride (the plot stays readable and the page answers within seconds per minute of video).
MAX_WINDOWS = 120
MAX_EXAMPLES = 32
# The player's copy: never upscaled, a keyframe every second or so for seeking.
PREVIEW_SHORT_SIDE = 480
# The camera tab: at most this many seconds between the frames the browser sends (the clip's
# sampling step halved, if smaller), windows kept for the rolling plot, camera streams at once.
CAMERA_FRAME_S = 0.1
CAMERA_HISTORY = 60
CAMERA_STREAMS = 4
# Before gradio is imported: no telemetry, no Hugging Face Hub calls, nothing proxied for our own address.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_SHARE": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")

CSS = """
#status .ok { margin: 0; }
#status .error { margin: 0; color: #b91c1c; font-weight: 600; }
#card table { font-size: 0.9em; border-collapse: collapse; }
#card th { text-align: left; font-weight: 600; padding-right: 1.5em; white-space: nowrap; }
#card th, #card td { border-top: 1px solid var(--border-color-primary); padding-top: 0.3em; padding-bottom: 0.3em; }
#card code { word-break: break-all; }
#live_status .ok { margin: 0; }
#live_status .error { margin: 0; color: #b91c1c; font-weight: 600; }
#live_timeline img { max-width: 100%; }
"""


def collect_examples(inputs: Sequence[str]) -> list[Path]:
    """Videos named by ``--examples``, as predict takes its inputs (files, folders searched
    recursively with hidden files left out, list files), at most :data:`MAX_EXAMPLES`.

    Raises:
        PredictError: one that does not exist or holds no video.
    """
    from vidaccel_train.predict.inputs import collect_inputs

    try:
        found = [Path(path).resolve() for path, _ in collect_inputs(inputs, classes=[])]
    except PredictError as err:
        raise PredictError(f"--examples {err}") from None
    return list(dict.fromkeys(found))[:MAX_EXAMPLES]


# ---------------------------------------------------------------------------------- the page's work


@dataclass
class Result:
    """What the page shows for one video at one moment: the status line (an error line when
    the file could not be read, the other fields then empty), the player's copy, the top-5,
    the times taken and the timeline plot."""

    status_html: str
    preview: str | None = None
    top: dict[str, float] | None = None
    latency_md: str = ""
    timeline_png: str | None = None


def _message(text: str, error: bool = False) -> str:
    role = ' role="alert"' if error else ""
    return f'<p class="{"error" if error else "ok"}"{role}>{html.escape(text)}</p>'


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


class DemoSession:
    """The predictor and a scratch folder for the player's copies and the timeline plots (gradio
    copies what the page shows into its own cache, so each video's files go when the next comes)."""

    def __init__(self, predictor, artifact: Path, work_dir: str | Path, stride_s: float | None = None):
        self.predictor = predictor
        self.artifact = artifact
        self.work_dir = Path(work_dir)
        self.stride_s = stride_s
        self.model_lock = threading.Lock()  # the upload and the cameras share one program

    def card(self) -> str:
        return model_card(self.predictor.manifest, self.artifact)

    def classify(self, video: str | None) -> Iterator[Result]:
        """The page's answers for ``video`` as they come: the top-5 first, then the upright
        copy for the player, then the timeline (long videos). Never raises: a file that cannot
        be read gives one error line."""
        if not video:
            yield Result(_message("Upload a video, or pick an example."))
            return
        path = Path(video)
        name = path.name
        try:
            yield from self._classify(path, name)
        except VideoDecodeError as err:
            yield Result(_message(f"error: {_named(str(err), path)}", error=True))
        except Exception as err:  # a bug must not take the page down: say it, log the traceback
            log.exception("classifying %s failed", path)
            yield Result(_message(f"error: {name}: unexpected failure ({type(err).__name__}: {err})", error=True))

    def _classify(self, path: Path, name: str) -> Iterator[Result]:
        from vidaccel_train.data.video_io import probe

        predictor = self.predictor
        info = probe(path, predictor.display_aspect)  # a non-video file stops here, before any model work
        if math.isfinite(info.duration_s) and info.fps > 0 and info.duration_s * info.fps < 1.5:
            raise VideoDecodeError(f"{path}: a single picture ({info.codec}), not a video")
        with self.model_lock:
            (prediction,) = predictor.run([(str(path), None)])
        if prediction.error:
            raise VideoDecodeError(f"{path}: {prediction.error}")
        top = dict(prediction.top(TOPK, predictor.classes))
        described = _describe(info, name)
        views = predictor.views.clips * predictor.views.crops
        latency = [
            f"**This prediction:** decode {_seconds(prediction.decode_s)}, model {_seconds(prediction.model_s)} "
            f"({_views(predictor.views.clips, predictor.views.crops)}: "
            f"{prediction.model_s * 1000 / views:.1f} ms a clip)"
        ]
        yield Result(_message(f"{described} — making the player's copy…"), None, top, latency[0])

        for previous in self.work_dir.iterdir():  # one video at a time (concurrency 1): the last one's files are served
            shutil.rmtree(previous, ignore_errors=True)
        folder = self.work_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        preview, note = None, ""
        started = time.perf_counter()
        try:
            preview = str(make_preview(path, folder / f"{path.stem}.mp4", info.fps))
            latency.append(f"upright H.264 copy for the player: {_seconds(time.perf_counter() - started)}")
        except VideoDecodeError as err:
            note = f" (no player copy: {_named(str(err), path)})"

        timeline_png = None
        span = predictor.clip.span_s
        if math.isfinite(info.duration_s) and info.duration_s >= 2 * span:
            yield Result(_message(f"{described}{note} — classifying it over time…"), preview, top, "  \n".join(latency))
            stride = self.stride_s or max(span / 2, info.duration_s / MAX_WINDOWS)
            started = time.perf_counter()
            try:
                with self.model_lock:
                    timeline = predictor.timeline(path, stride)
            except VideoDecodeError as err:
                note += f" (no timeline: {_named(str(err), path)})"
            else:
                timeline_png = str(folder / f"{path.stem}.timeline.png")
                timeline.plot(Path(timeline_png), TOPK)
                latency.append(
                    f"timeline: {len(timeline.starts)} windows of {span:.2f} s every {stride:.2f} s "
                    f"in {_seconds(time.perf_counter() - started)}"
                )
        else:
            latency.append(f"no timeline: the video is shorter than two clips ({2 * span:.2f} s)")
        yield Result(_message(f"{described}{note} — done."), preview, top, "  \n".join(latency), timeline_png)


# ---------------------------------------------------------------------------------- the camera


@dataclass
class LiveAnswer:
    """What the camera tab shows after a frame: the status line, and the newest window's top-5
    and the rolling plot (an ``<img>`` of a PNG) when a window was classified (None: unchanged)."""

    status_html: str
    top: dict[str, float] | None = None
    timeline_html: str | None = None


class CameraStream:
    """One browser's camera: :class:`~vidaccel_train.data.live.RollingWindows` over its frames
    (seconds from the arrival of a segment's first frame on this server), the arrival times of
    the last frames and the probabilities of the last :data:`CAMERA_HISTORY` windows. A new
    segment starts when the picture changes size or frames stop coming for longer than a window
    (the camera stopped and started again): a window never mixes sizes or spans a pause."""

    def __init__(self, clip, stride_s: float):
        self.clip, self.stride_s = clip, stride_s
        self.windows = None
        self.size: tuple[int, int] | None = None
        self.origin: float | None = None  # monotonic seconds of the first frame of the stream
        self.segment_origin = 0.0  # ... and of the current segment
        self.arrivals: deque[float] = deque(maxlen=64)
        self.history: deque[tuple[float, list[float]]] = deque(maxlen=CAMERA_HISTORY)
        self.classified = 0
        self.skipped = 0

    def push(self, frame, now: float) -> list:
        """Take an RGB frame ``(H, W, 3)`` uint8 that arrived at ``now``; the windows it finishes,
        their ``start_s`` from the stream's first frame."""
        import numpy as np

        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        frame = np.array(frame[..., :3], dtype=np.uint8)  # its own, writable (gradio's is read-only)
        size = frame.shape[:2]
        last = self.arrivals[-1] if self.arrivals else None
        if self.windows is None or size != self.size or now - last > self.clip.span_s:
            from vidaccel_train.data.live import RollingWindows

            if self.origin is None:
                self.origin = now
            self.windows = RollingWindows(self.clip, self.stride_s, _camera_frame)
            self.size, self.segment_origin = size, now
        self.arrivals.append(now)
        finished = self.windows.push(now - self.segment_origin, frame, now)
        for window in finished:
            window.start_s += self.segment_origin - self.origin
        return finished

    def frames_per_second(self, now: float, over_s: float = 3.0) -> float:
        recent = [t for t in self.arrivals if t >= now - over_s]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0


def _camera_frame(frame):
    """A camera frame ``(H, W, 3)`` -> the ``(3, H, W)`` uint8 tensor a clip holds."""
    import torch

    return torch.from_numpy(frame).permute(2, 0, 1)


def camera_timeline_html(
    history: Sequence[tuple[float, Sequence[float]]], classes: Sequence[str], span_s: float
) -> str:
    """The rolling plot of the last windows: the :data:`TOPK` classes most probable over them,
    at each window's centre, as an ``<img>`` holding its PNG (no file, nothing to fetch)."""
    import base64
    import io

    from matplotlib.figure import Figure  # no pyplot: each stream draws its own figure, thread-safe

    centres = [start + span_s / 2 for start, _ in history]
    mean = [sum(p[i] for _, p in history) / len(history) for i in range(len(classes))]
    shown = sorted(range(len(classes)), key=lambda i: -mean[i])[:TOPK]
    figure = Figure(figsize=(6.4, 2.4), dpi=80)
    axes = figure.add_subplot()
    for index in shown:
        axes.plot(centres, [p[index] for _, p in history], label=classes[index])
    axes.set_ylim(0, 1)
    axes.set_xlim(centres[0] - span_s / 2, max(centres[-1], centres[0] + span_s) + span_s / 2)
    axes.set_xlabel("seconds since the camera started (window centre)")
    axes.set_ylabel("probability")
    axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="classes over the last {len(history)} windows" src="data:image/png;base64,{data}">'


def camera_answer(session: DemoSession, stream: CameraStream, frame) -> LiveAnswer:
    """Push one frame of ``stream``; classify the newest window it finished (older ones it also
    finished are counted as skipped). Never raises: a bug is logged and said in the status line."""
    try:
        return _camera_answer(session, stream, frame)
    except Exception as err:
        log.exception("the camera frame failed")
        return LiveAnswer(_message(f"error: unexpected failure ({type(err).__name__}: {err})", error=True))


def _camera_answer(session: DemoSession, stream: CameraStream, frame) -> LiveAnswer:
    import torch

    now = time.monotonic()
    finished = stream.push(frame, now)
    fps = stream.frames_per_second(now)
    predictor = session.predictor
    if not finished:
        if stream.classified:
            return LiveAnswer(None)
        return LiveAnswer(
            _message(
                f"receiving {fps:.0f} frames/s ({frame.shape[1]}×{frame.shape[0]}); the first window "
                f"needs {predictor.clip.span_s:.2f} s of them…"
            )
        )
    stream.skipped += len(finished) - 1
    window = finished[-1]
    with session.model_lock:
        started = time.perf_counter()
        probabilities = predictor.clip_probabilities(torch.stack(window.frames))
        model_s = time.perf_counter() - started
    stream.classified += 1
    values = [float(p) for p in probabilities]
    stream.history.append((window.start_s, values))
    top = dict(sorted(zip(predictor.classes, values), key=lambda item: -item[1])[:TOPK])
    best, probability = next(iter(top.items()))
    skipped = f" · {stream.skipped} windows skipped" if stream.skipped else ""
    status = (
        f"window {window.start_s:.1f}–{window.start_s + predictor.clip.span_s:.1f} s: {best} {probability:.2f} · "
        f"{fps:.0f} frames/s received · model {model_s * 1000:.0f} ms{skipped}"
    )
    timeline = camera_timeline_html(stream.history, predictor.classes, predictor.clip.span_s)
    return LiveAnswer(_message(status), top, timeline)


def camera_stride(session: DemoSession) -> float:
    """Seconds between the camera's windows: --stride, or half the clip's span."""
    return session.stride_s or session.predictor.clip.span_s / 2


def camera_frame_interval(clip) -> float:
    """Seconds between the frames the browser sends: :data:`CAMERA_FRAME_S`, or half the clip's
    sampling step if that is smaller (down to 0.05 s: 20 frames a second)."""
    return max(0.05, min(CAMERA_FRAME_S, clip.sampling_rate / clip.target_fps / 2))


def _named(message: str, path: Path) -> str:
    """An error about an upload, with the file's name instead of the server's temporary path
    (and without FFmpeg's error numbers)."""
    return re.sub(r"\[Errno -?\d+\] ", "", message.replace(str(path), path.name))


def _describe(info, name: str) -> str:
    turned = ""
    if info.rotation or info.orientation.mirrored:
        turned = f", stored turned {info.rotation}°" + (" and mirrored" if info.orientation.mirrored else "")
    duration = f"{info.duration_s:.1f} s" if math.isfinite(info.duration_s) else "unknown length"
    fps = f", {info.fps:.3g} fps" if info.fps else ""
    return f"{name}: {duration}, {info.width}×{info.height} upright{turned}{fps}, {info.codec}"


def make_preview(source: Path, target: Path, fps: float) -> Path:
    """An upright H.264 mp4 of ``source`` for the browser's player, made through the reader
    (display matrix applied to the pixels, times from the first frame), short side at most
    :data:`PREVIEW_SHORT_SIDE`, no sound. Raises :class:`VideoDecodeError`."""
    from vidaccel_train.data.video_io import EncodeSettings, transcode

    keyframes = max(1, round(fps)) if fps and math.isfinite(fps) else 30
    transcode(source, target, EncodeSettings(short_side=PREVIEW_SHORT_SIDE, keyframe_interval=keyframes, crf=23))
    return target


def model_card(manifest: Manifest, artifact: Path) -> str:
    """The manifest's facts about ``artifact`` as an HTML table (what an older export did not
    record is left out)."""
    record = manifest.artifact(artifact.name) or ArtifactRecord(file=artifact.name)
    clip = manifest.clip
    size = f"{record.bytes / 1e6:.1f} MB" if record.bytes >= 1e6 else f"{record.bytes / 1e3:.0f} kB"
    rows = [
        ("model", f"{manifest.model}, {record.precision or '?'} ({record.format}, {size})"),
        (f"classes ({len(manifest.classes)})", ", ".join(manifest.classes)),
        (
            "input clip",
            f"{'×'.join(map(str, manifest.input_shape))} ({LAYOUT}): {clip.num_frames} frames, one every "
            f"{clip.sampling_rate} at {clip.target_fps:g} fps; short side {clip.eval_short_side}, "
            f"{clip.crop_size}×{clip.crop_size} crops",
        ),
        ("views per video", _views(manifest.test_views.clips, manifest.test_views.crops)),
    ]
    if record.top1 is not None:
        rows.append(
            (
                "accuracy",
                f"top-1 {record.top1:.3f}, top-5 {record.top5 if record.top5 is not None else math.nan:.3f} on "
                f"{manifest.verified_on.get('videos', '?')} test videos, through the ExecuTorch runtime",
            )
        )
    if record.agreement is not None:
        clips = record.clip_agreement if record.clip_agreement is not None else math.nan
        rows.append(("agreement with the trained model", f"{record.agreement:.1%} of videos, {clips:.1%} of clips"))
    if record.latency_ms is not None:
        rows.append(
            (
                "latency",
                f"{record.latency_ms:.1f} ms a clip, batch 1, {record.threads or '?'} threads (measured at export)",
            )
        )
    body = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>" for key, value in rows)
    body += (
        f"<tr><th>sha256</th><td><code>{html.escape(record.sha256 or '?')}</code> (checked at start)</td></tr>"
        f"<tr><th>file</th><td><code>{html.escape(str(artifact))}</code></td></tr>"
    )
    return f"<h3>Model</h3><table>{body}</table>"


def _views(clips: int, crops: int) -> str:
    return f"{clips} {'clip' if clips == 1 else 'clips'} × {crops} {'crop' if crops == 1 else 'crops'}"


# ---------------------------------------------------------------------------------- the page


def build_page(session: DemoSession, examples: Sequence[Path] = ()):
    """The gradio Blocks of the page (gradio imported here, with the offline settings)."""
    os.environ.update(OFFLINE_ENV)
    import gradio as gr

    manifest = session.predictor.manifest
    outputs_per_result = ("status_html", "preview", "top", "latency_md", "timeline_png")

    def run(video):
        for result in session.classify(video):
            yield tuple(getattr(result, name) for name in outputs_per_result)

    span, stride = session.predictor.clip.span_s, camera_stride(session)

    def on_frame(frame, stream):
        if stream is None:
            stream = CameraStream(session.predictor.clip, stride)
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip(), stream
        answer = camera_answer(session, stream, frame)
        return (
            gr.skip() if answer.top is None else answer.top,
            gr.skip() if answer.timeline_html is None else answer.timeline_html,
            gr.skip() if answer.status_html is None else answer.status_html,
            stream,
        )

    title = f"{manifest.model} · {session.artifact.name}"
    with gr.Blocks(title=f"vidaccel_train demo: {title}", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(
            f"## Video classification: {html.escape(title)}\nRuns on this machine; nothing is sent anywhere.",
            latex_delimiters=[],
        )
        with gr.Tabs():
            with gr.Tab("Upload", id="upload_tab"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(
                            label="Video (any file FFmpeg reads)", file_count="single", elem_id="upload", height=120
                        )
                        if examples:
                            gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples")
                        status = gr.HTML(_message("Upload a video, or pick an example."), elem_id="status")
                        preview = gr.Video(
                            label="Upright, as the model reads it",
                            interactive=False,
                            format=None,
                            elem_id="preview",
                            buttons=["download"],
                            loop=True,
                            autoplay=True,
                        )
                    with gr.Column(scale=1):
                        views = _views(session.predictor.views.clips, session.predictor.views.crops)
                        top = gr.Label(
                            label=f"Top {TOPK} for the whole video ({views}, as predict)",
                            num_top_classes=TOPK,
                            elem_id="top5",
                        )
                        latency = gr.Markdown(elem_id="latency", latex_delimiters=[])
                timeline = gr.Image(
                    label="Classes over time (window centres)",
                    type="filepath",
                    interactive=False,
                    elem_id="timeline",
                    buttons=["download", "fullscreen"],
                )
            with gr.Tab("Camera", id="camera_tab"):
                gr.Markdown(
                    "Your browser's camera, streamed to this machine's server only (the browser asks for "
                    "permission; it allows cameras on `http://127.0.0.1`, `http://localhost` or https). "
                    f"A window of {span:.2f} s every {stride:.2f} s is classified as it completes.",
                    latex_delimiters=[],
                )
                with gr.Row():
                    with gr.Column(scale=1):
                        camera = gr.Image(
                            label="Camera (press record to start streaming)",
                            sources=["webcam"],
                            streaming=True,
                            type="numpy",
                            elem_id="camera",
                            webcam_options=gr.WebcamOptions(mirror=False),  # the model sees what the camera sees
                        )
                    with gr.Column(scale=1):
                        live_top = gr.Label(
                            label=f"Top {TOPK} of the newest window ({session.predictor.views.crops} crops)",
                            num_top_classes=TOPK,
                            elem_id="live_top5",
                        )
                        live_status = gr.HTML(
                            _message("Start the camera to classify what it shows."), elem_id="live_status"
                        )
                live_timeline = gr.HTML(elem_id="live_timeline")
                stream_state = gr.State(None)
        gr.HTML(session.card(), elem_id="card")
        upload.change(
            run,
            inputs=upload,
            outputs=[status, preview, top, latency, timeline],
            show_progress="minimal",
            concurrency_limit=1,
        )
        camera.stream(
            on_frame,
            inputs=[camera, stream_state],
            outputs=[live_top, live_timeline, live_status, stream_state],
            stream_every=camera_frame_interval(session.predictor.clip),
            time_limit=None,
            concurrency_limit=CAMERA_STREAMS,
            show_progress="hidden",
        )
    return page


# ---------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    from vidaccel_train.cli import ArgumentParser

    parser = ArgumentParser("python -m vidaccel_train.demo", __doc__)
    parser.add_argument("artifact", help="an export folder (<run>/export: its int8 program) or a .pte in one")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument(
        "--examples",
        nargs="+",
        default=[],
        metavar="VIDEO_OR_FOLDER",
        help=f"videos offered on the page to pick from (folders searched recursively; up to {MAX_EXAMPLES})",
    )
    parser.add_argument("--views", help="CLIPSxCROPS per video (default: the test views in the manifest, as predict)")
    parser.add_argument(
        "--stride",
        type=float,
        help=f"seconds between timeline windows (default: half the clip's span, wider past {MAX_WINDOWS} windows) "
        "and between the camera's windows (default: half the clip's span)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from vidaccel_train.quiet import silence_third_party_noise

    silence_third_party_noise()
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.stride is not None and not args.stride > 0:
        parser.error(f"--stride must be a positive number of seconds, got {args.stride}")
    return run_command(lambda: _start(args))


def _start(args) -> int:
    from vidaccel_train.predict import Predictor, parse_views

    views = parse_views(args.views) if args.views else None
    try:
        predictor = Predictor(args.artifact, views)  # a folder: the program its manifest prefers
        examples = collect_examples(args.examples)
    except OSError as err:  # a file named that cannot be read
        raise PredictError(str(err)) from None
    with tempfile.TemporaryDirectory(prefix="vidaccel-demo-") as work_dir:
        return _serve(DemoSession(predictor, predictor.program.path, work_dir, args.stride), examples, args)


def _serve(session: DemoSession, examples: Sequence[Path], args) -> int:
    try:
        page = build_page(session, examples)
    except ModuleNotFoundError as err:
        return report_user_error(
            f"the demo page needs {err.name}: pip install -e '.[demo]' (or bash scripts/setup.sh demo)"
        )
    import gradio as gr

    theme = gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))
    try:
        page.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            inbrowser=False,
            quiet=True,
            prevent_thread_lock=True,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
            footer_links=[],
            allowed_paths=[str(p) for p in examples],
            theme=theme,
            css=CSS,
        )
    except OSError:  # gradio's message names its own environment variables and parameters
        return report_user_error(
            f"cannot serve on {args.host}:{args.port}: the port is taken or the address is not one of this "
            "machine's; choose another --port or --host"
        )
    print(f"vidaccel_train demo of {session.artifact}: http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    signal.signal(
        signal.SIGTERM, _interrupt
    )  # `kill` stops it as Ctrl+C does: the server closed, the scratch folder removed
    try:
        page.block_thread()  # until Ctrl+C (gradio closes the server)
    except KeyboardInterrupt:
        pass
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
