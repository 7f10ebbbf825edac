"""Clips from a live source as it plays: a camera, a network stream, a pipe.

A live source has no duration and cannot seek; frames come in real time. :class:`LiveFeed`
decodes it in a process of its own (the reader), so decoding keeps up with the source whatever
the model does, and hands over the clips of a :class:`~vidaccel_train.data.clips.ClipContract`
starting every ``stride_s`` seconds, chosen from the frames' presentation timestamps as the
offline reader chooses them (:class:`RollingWindows`: the last frame shown at or before each
timestamp). One finished clip waits for the model: a newer one replaces it and the older is
counted as skipped, never queued (at the end of the frames, the clips the last frame completed
all wait, in order). A network source that drops is reopened with backoff.

The reader runs as ``python -m vidaccel_train.data.live`` (it inherits standard input, for
``-``); it talks to :class:`LiveFeed` over two pipes: JSON headers and raw frame bytes, no pickle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from vidaccel_train.data.contract import ClipContract
from vidaccel_train.errors import VideoDecodeError

# Schemes FFmpeg reads from the network: a drop is reopened, reads time out.
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp", "hls")
# Seconds a network source may take to open, and to deliver data once open, before it counts as gone.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
# Backoff between reopening attempts of a dropped network source, seconds.
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0
# A gap between frames wider than this many frame durations counts the frames missing in it as dropped.
DROP_GAP_FRAMES = 1.5
# A timestamp that goes back, or jumps ahead by more than this, starts a new segment (a restarted encoder).
JUMP_S = 10.0
# What FFmpeg opens as "video" that is text (its ANSI-art demuxer takes .txt, .nfo, ...).
_TEXT_FORMATS = frozenset({"tty"})


@dataclass(frozen=True)
class LiveSource:
    """What ``text`` names, as FFmpeg opens it: ``url`` (``pipe:0`` for ``-``), ``kind``
    (``"network"``, ``"device"``, ``"pipe"`` or ``"file"``), the input ``format`` to force (None:
    probed; ``v4l2`` for ``/dev/video*``) and FFmpeg input ``options``."""

    text: str
    url: str
    kind: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def reopens(self) -> bool:
        return self.kind == "network"

    @property
    def paced(self) -> bool:
        """A recording on disk plays at its own pace, as a camera would deliver it."""
        return self.kind == "file"


def live_source(text: str, input_format: str | None = None, options: dict[str, str] | None = None) -> LiveSource:
    """The :class:`LiveSource` a command-line ``text`` names: ``-`` (standard input), a URL
    (``rtsp://``, ``http://``, ``udp://``, ``tcp://``, ...), a V4L2 device (``/dev/video0``) or a
    recorded file (played at its own pace).

    Raises:
        VideoDecodeError: a path that does not exist.
    """
    options = dict(options or {})
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    if text == "-":
        return LiveSource(text, "pipe:0", "pipe", input_format, options)
    if scheme:
        name = scheme.group(1).lower()
        if name.startswith("rtsp"):
            options.setdefault("rtsp_transport", "tcp")  # UDP loses packets behind NAT and firewalls
        return LiveSource(text, text, "network" if name in NETWORK_SCHEMES else "file", input_format, options)
    path = Path(text)
    if not path.exists():
        raise VideoDecodeError(f"{text}: no such file, device or URL")
    if path.is_char_device() or text.startswith("/dev/video"):
        return LiveSource(text, text, "device", input_format or "v4l2", options)
    return LiveSource(text, str(path), "pipe" if path.is_fifo() else "file", input_format, options)


class RollingWindows:
    """The clips of ``clip`` starting every ``stride_s`` seconds (0, stride, 2 stride, ...) over
    frames pushed in presentation order, each frame at ``t`` seconds from the first.

    A clip's timestamps are ``clip.timestamps(start)``; each takes the last frame shown at or
    before it (the offline reader's choice: :func:`~vidaccel_train.data.video_io.read_clip`).
    A timestamp is settled when a later frame arrives, or at the end (:meth:`finish`).
    ``convert`` turns a frame into what a clip holds; it runs once per frame a clip takes.
    """

    def __init__(self, clip: ClipContract, stride_s: float, convert: Callable):
        self.clip, self.stride_s, self.convert = clip, stride_s, convert
        self.next_index = 0
        self.open: list[_Window] = []
        self.previous: _Frame | None = None

    def push(self, t: float, frame, arrived: float) -> list[_Window]:
        """Take the frame shown from ``t`` (received at ``arrived``, monotonic seconds); the clips it finishes."""
        current = _Frame(t, frame, arrived)
        while self.clip.timestamps(self.next_index * self.stride_s)[0] < t:
            self.open.append(_Window(self.next_index * self.stride_s, self.clip))
            self.next_index += 1
        done = []
        for window in self.open:
            while window.wanted(len(window.frames)) < t:
                window.take(self.previous or current, self.convert)
                if window.complete:
                    done.append(window)
                    break
        self.open = [w for w in self.open if not w.complete]
        self.previous = current
        return done

    def finish(self, end_s: float) -> list[_Window]:
        """At the end of the frames, the last shown until ``end_s``: the open clips that end by
        then (as ``predict --timeline`` keeps a video's windows), completed with it."""
        done = []
        if self.previous is not None:
            for window in self.open:
                if window.start_s + self.clip.span_s <= end_s + 1e-6:
                    while not window.complete:
                        window.take(self.previous, self.convert)
                    done.append(window)
        self.open = []
        return done


@dataclass
class _Frame:
    t: float
    frame: object
    arrived: float
    converted: object = None


@dataclass
class _Window:
    start_s: float
    clip: ClipContract
    frames: list = field(default_factory=list)
    arrived: float = 0.0  # when the frame its last timestamp takes arrived
    times: list[float] = field(init=False)  # its timestamps, seconds from the first frame

    def __post_init__(self):
        self.times = self.clip.timestamps(self.start_s)

    def wanted(self, slot: int) -> float:
        return math.inf if slot >= self.clip.num_frames else self.times[slot]

    @property
    def complete(self) -> bool:
        return len(self.frames) == self.clip.num_frames

    def take(self, frame: _Frame, convert: Callable) -> None:
        if frame.converted is None:
            frame.converted = convert(frame.frame)
        self.frames.append(frame.converted)
        self.arrived = frame.arrived


@dataclass
class Clip:
    """A clip of a live source: uint8 frames ``(T, 3, H, W)``, upright, its start and end
    (seconds from the source's first frame; after a reopening, from the first frame of the
    session on the wall clock) and when the frame of its last timestamp arrived (``time.monotonic``)."""

    frames: object  # torch.Tensor
    start_s: float
    end_s: float
    arrived: float


@dataclass
class LiveStats:
    """Counts of a live session so far: ``frames`` received, ``dropped`` (missing from the
    timestamps: gaps wider than :data:`DROP_GAP_FRAMES` frame durations of the stream's nominal
    rate), clips ``windows`` made and ``skipped``
    (replaced by a newer one while the model was busy), ``reopened`` drops recovered."""

    frames: int = 0
    dropped: int = 0
    windows: int = 0
    skipped: int = 0
    reopened: int = 0


class LiveFeed:
    """Clips of a live ``source`` (:func:`live_source`) for ``clip``, every ``stride_s`` seconds,
    decoded by a reader process of its own. ``reconnect_s``: how long a dropped network source is
    tried again (0: a drop ends the feed). Use as a context manager; iterate :meth:`clips`.

    Raises:
        VideoDecodeError: on entering: the source cannot be opened, has no video, or (a network
            source or a device) sends nothing within :data:`OPEN_TIMEOUT_S` (one line, from the
            reader). A pipe waits for its writer.
        RuntimeError: the reader process stopped without saying why (a crash; its traceback is
            on standard error).
    """

    def __init__(
        self,
        source: LiveSource,
        clip: ClipContract,
        stride_s: float,
        display_aspect: str = "stored",
        reconnect_s: float = 30.0,
    ):
        self.source, self.clip, self.stride_s = source, clip, stride_s
        self.settings = {
            "source": dataclasses.asdict(source),
            "clip": dataclasses.asdict(clip),
            "stride_s": stride_s,
            "display_aspect": display_aspect,
            "reconnect_s": reconnect_s,
        }
        self.stats = LiveStats()
        self.ended: str | None = None
        self.description = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> LiveFeed:
        messages_r, messages_w = os.pipe()
        control_r, control_w = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(messages_w), str(control_r), json.dumps(self.settings)],
            pass_fds=(messages_w, control_r),
            start_new_session=True,  # Ctrl-C and a group's SIGTERM are predict's: the reader ends with its pipe
            stdin=None if self.source.kind == "pipe" and self.source.url == "pipe:0" else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # predict's standard output is its own (the reader says things on stderr)
        )
        os.close(messages_w)
        os.close(control_r)
        self._messages, self._control = Connection(messages_r), Connection(control_w, readable=False)
        try:
            header = self._receive()
        except BaseException:  # Ctrl-C while the source opens: no reader left behind
            self._process.kill()
            self.close()
            raise
        if header["kind"] == "error":
            self.close()
            raise VideoDecodeError(header["message"])
        self.description = header["description"]
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def clips(self) -> Iterator[Clip]:
        """Each clip as it is asked for: the newest finished since the last one (older ones
        counted in ``stats.skipped``); ends when the source does (``ended`` says why).

        Raises:
            RuntimeError: the reader process stopped without saying why.
        """
        import torch

        from vidaccel_train.data.video_io import Orientation

        while True:
            try:
                self._control.send_bytes(b"next")
            except OSError:  # the reader has said all it will and gone: its end is in the pipe
                pass
            header = self._receive()
            self.stats = LiveStats(**header["stats"])
            if header["kind"] == "end":
                self.ended = header["reason"]
                return
            data = self._messages.recv_bytes()
            frames = torch.from_numpy(np.frombuffer(data, np.uint8).reshape(header["shape"]).copy())
            orientation = Orientation(**header["orientation"])
            yield Clip(
                orientation.apply(frames).permute(0, 3, 1, 2), header["start_s"], header["end_s"], header["arrived"]
            )

    def stop(self) -> None:
        """Ask the reader for its last counts and end it (Ctrl-C: the counts up to now)."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            self._control.send_bytes(b"stop")
            while self._messages.poll(2.0):
                header = json.loads(self._messages.recv_bytes())
                if header["kind"] == "window":
                    self._messages.recv_bytes()
                    continue
                if "stats" in header:
                    self.stats = LiveStats(**header["stats"])
                if header["kind"] == "end":
                    break
        except (OSError, EOFError, ValueError, KeyError):  # interrupted mid-message: the counts so far
            pass

    def close(self) -> None:
        if self._process is None:
            return
        for conn in (self._control, self._messages):
            conn.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _receive(self) -> dict:
        while not self._messages.poll(1.0):
            if self._process.poll() is not None and not self._messages.poll(0):
                raise RuntimeError(
                    f"the live reader of {self.source.text} stopped (exit code {self._process.returncode})"
                )
        try:
            return json.loads(self._messages.recv_bytes())
        except EOFError:
            self._process.wait()
            raise RuntimeError(
                f"the live reader of {self.source.text} stopped (exit code {self._process.returncode})"
            ) from None


# ---------------------------------------------------------------------------------- the reader process


class _Reader:
    """The reader process: decodes the source, makes the clips, hands the newest one over when asked."""

    def __init__(self, messages: Connection, control: Connection, settings: dict):
        self.messages, self.control = messages, control
        self.source = LiveSource(**settings["source"])
        self.clip = ClipContract.from_dict(settings["clip"])
        self.stride_s = settings["stride_s"]
        self.display_aspect = settings["display_aspect"]
        self.reconnect_s = settings["reconnect_s"]
        self.stats = LiveStats()
        self.lock = threading.Lock()
        self.wanted = False
        # Finished clips not yet asked for: the newest one, or at the end of a segment the clips its
        # last frame completed, in order (a handful: as many as overlap one clip).
        self.waiting: deque[dict] = deque()
        self.ended: str | None = None
        self.session_origin: float | None = None  # monotonic seconds of the first frame
        self.said_end = threading.Event()

    # -- talking to LiveFeed (under the lock)
    def _send(self, header: dict, data: bytes | None = None) -> None:
        self.messages.send_bytes(json.dumps({**header, "stats": dataclasses.asdict(self.stats)}).encode())
        if data is not None:
            self.messages.send_bytes(data)

    def _offer(self, window: dict, last: bool = False) -> None:
        """Hand ``window`` over if it is asked for, else keep it instead of the one waiting (that
        one skipped); ``last``: completed by the end of the frames, kept beside those waiting (no
        newer clip will come to make them stale)."""
        with self.lock:
            self.stats.windows += 1
            if self.wanted:
                self.wanted = False
                self._send(*window["message"])
                return
            if not last:
                self.stats.skipped += len(self.waiting)
                self.waiting.clear()
            self.waiting.append(window)

    def _end(self, reason: str) -> None:
        """Say the source ended, after the clips still waiting (the control thread hands them over)."""
        with self.lock:
            self.ended = reason
            if not self.waiting:
                self._send({"kind": "end", "reason": reason})
                return
        self.said_end.wait()

    def _listen(self) -> None:
        """The control thread: ``next`` (a clip when there is one), ``stop`` or the pipe closed (end now)."""
        while True:
            try:
                request = self.control.recv_bytes()
            except (EOFError, OSError):
                os._exit(0)
            with self.lock:
                if request == b"stop":
                    try:
                        self._send({"kind": "end", "reason": "stopped"})
                    finally:
                        os._exit(0)
                if self.waiting:
                    self._send(*self.waiting.popleft()["message"])
                    if self.ended is not None and not self.waiting:
                        self._send({"kind": "end", "reason": self.ended})
                        self.said_end.set()
                elif self.ended is None:
                    self.wanted = True

    # -- the source
    def _open(self):
        """The source opened and its video stream (a player's choice), or :class:`VideoDecodeError`
        saying why not in one line; nothing is left open after a failure."""
        import av

        from vidaccel_train.data.video_io import _video_stream

        timeout = (OPEN_TIMEOUT_S, READ_TIMEOUT_S) if self.source.kind in ("network", "device") else None
        options = dict(self.source.options)
        if self.source.kind != "file":  # start at once: a second of probing, not five
            options.setdefault("analyzeduration", "1000000")
            options.setdefault("probesize", "1000000")
        try:
            container = av.open(self.source.url, format=self.source.format, options=options, timeout=timeout)
        except av.error.ExitError:
            raise VideoDecodeError(f"{self.source.text}: nothing received within {OPEN_TIMEOUT_S:g} s") from None
        except (av.error.FFmpegError, OSError, ValueError) as err:
            raise VideoDecodeError(f"{self.source.text}: cannot open ({_reason(err)})") from None
        try:
            if container.format.name in _TEXT_FORMATS:
                raise VideoDecodeError(f"{self.source.text}: a text file, not a video")
            return container, _video_stream(container, Path(self.source.text))
        except VideoDecodeError:
            container.close()
            raise

    def run(self) -> None:
        try:
            container, stream = self._open()
        except VideoDecodeError as err:
            with self.lock:
                self._send({"kind": "error", "message": str(err)})
            return
        rate = float(stream.average_rate or 0.0)
        description = f"{stream.codec_context.width}x{stream.codec_context.height} {stream.codec_context.codec.name}"
        description += f" at {rate:.3g} fps" if rate else ""
        with self.lock:
            self._send({"kind": "opened", "description": description})
        threading.Thread(target=self._listen, daemon=True).start()
        while True:
            try:
                reason = self._play(container, stream)
            except Exception as err:  # a bug: said, with its traceback, and the session ends with a summary
                import traceback

                traceback.print_exc()
                return self._end(f"the reader failed: {type(err).__name__}: {err}")
            container.close()
            if not self.source.reopens or self.reconnect_s <= 0:
                return self._end(reason)
            container, stream = self._reopen(reason)
            if container is None:
                return self._end(f"{reason}; not back within {self.reconnect_s:g} s")

    def _reopen(self, reason: str):
        print(f"warning: {self.source.text}: {reason}; reopening (for up to {self.reconnect_s:g} s)", file=sys.stderr)
        dropped = time.monotonic()
        deadline, backoff = dropped + self.reconnect_s, FIRST_BACKOFF_S
        while time.monotonic() < deadline:
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(2 * backoff, MAX_BACKOFF_S)
            try:
                container, stream = self._open()
            except VideoDecodeError:
                continue
            self.stats.reopened += 1
            print(f"{self.source.text}: back after {time.monotonic() - dropped:.1f} s", file=sys.stderr)
            return container, stream
        return None, None

    def _play(self, container, stream) -> str:
        """Decode until the source ends or fails; the reason, in words."""
        import av

        from vidaccel_train.data.video_io import (
            _DECODE_ORDER_FORMATS,
            _display_width,
            _frame_orientation,
            _FrameClock,
            _to_rgb,
        )

        stream.thread_type = "SLICE"  # frame threads hold frames back: latency
        stream.thread_count = 0
        rate = float(stream.average_rate or 0.0)
        # A frame's duration: the stream's rate, or (none, or a clock tick's) the shortest interval seen.
        frame_s = 1 / rate if 1 <= rate <= 240 else 0.0
        learn_rate = not frame_s
        sar = stream.sample_aspect_ratio
        sample_aspect = float(sar) if sar and sar > 0 else 1.0
        windows = first_t = last_t = size = orientation = None
        offset, paced_from = 0.0, None
        # The offline reader's clock: timestamps, or the packets' in order where frames have none (AVI).
        clock = _FrameClock(stream, container.format.name in _DECODE_ORDER_FORMATS)

        def convert(frame):
            return _to_rgb(frame, size)

        def take(frame) -> None:
            nonlocal windows, first_t, last_t, size, orientation, offset, paced_from, frame_s
            t_stream = clock.time(frame)
            if t_stream is None:  # a frame without a time (a raw elementary stream): a frame after the last
                if last_t is None:
                    t_stream = 0.0
                elif frame_s:
                    t_stream = last_t + frame_s
                else:
                    return
            now = time.monotonic()
            if windows is None or t_stream < last_t - 1e-6 or t_stream - last_t > JUMP_S:
                if windows is not None:  # a new segment: what is open is finished as far as it goes
                    for window in windows.finish(last_t + frame_s - first_t):
                        self._offer(self._message(window, offset, orientation), last=True)
                if self.session_origin is None:
                    self.session_origin = now
                offset = now - self.session_origin
                width = _display_width(frame.width, sample_aspect) if self.display_aspect == "square" else frame.width
                size, orientation = (width, frame.height), _frame_orientation(frame)
                windows = RollingWindows(self.clip, self.stride_s, convert)
                first_t, last_t, paced_from = t_stream, t_stream, now
            else:
                if learn_rate and t_stream > last_t:
                    frame_s = min(frame_s or math.inf, t_stream - last_t)
                if frame_s and t_stream - last_t > DROP_GAP_FRAMES * frame_s:
                    self.stats.dropped += round((t_stream - last_t) / frame_s) - 1
            if self.source.paced:
                delay = paced_from + (t_stream - first_t) - now
                if delay > 0:
                    time.sleep(delay)
                    now = time.monotonic()
            self.stats.frames += 1
            last_t = t_stream
            for window in windows.push(t_stream - first_t, frame, now):
                self._offer(self._message(window, offset, orientation))

        try:
            for packet in container.demux(stream):
                clock.fed(packet)
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:  # a damaged packet (UDP loss): the decoder goes on
                    continue
                for frame in frames:
                    take(frame)
        except av.error.ExitError:
            reason = f"nothing received for {READ_TIMEOUT_S:g} s"
        except (av.error.FFmpegError, OSError) as err:
            reason = f"read failed ({_reason(err)})"
        else:
            reason = "end of stream"
        if reason != "end of stream":  # the frames the decoder still holds
            try:
                for frame in stream.codec_context.decode(None):
                    take(frame)
            except av.error.FFmpegError:
                pass
        if windows is not None:
            for window in windows.finish(last_t + frame_s - first_t):
                self._offer(self._message(window, offset, orientation), last=True)
        return reason

    def _message(self, window: _Window, offset: float, orientation) -> dict:
        frames = np.stack(window.frames)
        header = {
            "kind": "window",
            "start_s": offset + window.start_s,
            "end_s": offset + window.start_s + self.clip.span_s,
            "arrived": window.arrived,
            "shape": list(frames.shape),
            "orientation": dataclasses.asdict(orientation),
        }
        return {"message": (header, frames.tobytes())}


def _reason(err: Exception) -> str:
    return re.sub(r"\[Errno -?\d+\] ", "", getattr(err, "strerror", None) or str(err))


def _reader_main(argv: list[str]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is LiveFeed's to handle: it asks for the counts
    messages, control = Connection(int(argv[0]), readable=False), Connection(int(argv[1]), writable=False)
    _Reader(messages, control, json.loads(argv[2])).run()


if __name__ == "__main__":
    _reader_main(sys.argv[1:])
