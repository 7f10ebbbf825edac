"""A corpus of the video files people actually have, written with PyAV, each frame carrying its
index in its pixels so that the frame returned for any time can be read back.

Every frame, as a player shows it (upright, square pixels), is ``HEIGHT x WIDTH``: a band of
8 blocks along the top spells the frame index in binary (white: 1, black: 0, least
significant bit on the left), the rest is mid-grey with a white block in the bottom-right
corner. A frame read sideways, upside down or mirrored reads back as no valid frame.

Each case records the presentation time of every frame a player shows, counted from the
first one: :meth:`Case.expected` is the reference index for a time, computed from those
timestamps alone.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

HEIGHT, WIDTH = 48, 64
BITS = 8
_BAND = 12  # rows of the index band
_CORNER = 12  # side of the bottom-right marker


def painted_frame(index: int) -> np.ndarray:
    """The upright ``(HEIGHT, WIDTH, 3)`` frame that carries ``index``."""
    frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    block = WIDTH // BITS
    for bit in range(BITS):
        frame[:_BAND, bit * block : (bit + 1) * block] = 255 if (index >> bit) & 1 else 0
    frame[-_CORNER:, -_CORNER:] = 255
    return frame


def read_index(frame: torch.Tensor | np.ndarray) -> int | None:
    """The index a frame ``(3, H, W)`` (or ``(H, W, 3)``) carries, or ``None`` if it is not an
    upright painted frame (wrong shape, orientation or content)."""
    array = torch.as_tensor(frame).float()
    if array.shape[0] == 3:
        array = array.permute(1, 2, 0)
    if tuple(array.shape[:2]) != (HEIGHT, WIDTH):
        return None
    gray = array.mean(-1)
    block = WIDTH // BITS
    corner = gray[-_CORNER + 2 : -2, -_CORNER + 2 : -2].mean()
    middle = gray[_BAND + 4 : -_CORNER - 2, 4 : WIDTH // 2].mean()
    if corner < 200 or not 90 < middle < 170:
        return None
    index = 0
    for bit in range(BITS):
        value = gray[2 : _BAND - 2, bit * block + 2 : (bit + 1) * block - 2].mean()
        if 60 < value < 195:
            return None
        index |= int(value >= 195) << bit
    return index


def read_indices(frames: torch.Tensor) -> list[int | None]:
    """:func:`read_index` of each frame of ``(T, 3, H, W)``."""
    return [read_index(frame) for frame in frames]


@dataclass
class Case:
    """One generated file and the presentation times (seconds from the first shown frame) of
    the frames it shows, in order: ``shown[k]`` is the index painted into the k-th of them."""

    path: Path
    times: list[float]
    shown: list[int]
    end_s: float
    notes: dict = field(default_factory=dict)

    def expected(self, t: float) -> int:
        """The index of the frame a player shows at ``t``: the last one shown at or before it
        (the first before the first, the last past the end)."""
        k = bisect.bisect_right(self.times, t + 1e-9) - 1
        return self.shown[max(0, min(k, len(self.shown) - 1))]


class _NonSeekable(io.RawIOBase):
    """A write-only stream that cannot seek, as a browser's MediaRecorder output: the muxer
    writes neither a duration nor an index."""

    def __init__(self, raw):
        self.raw = raw

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        return self.raw.write(data)


def _stored(upright: np.ndarray, rotation_cw: int, mirror: bool) -> np.ndarray:
    """The frame a camera stores so that a player, turning it ``rotation_cw`` degrees clockwise
    (and mirroring it left-right after that when ``mirror``), shows ``upright``."""
    frame = upright[:, ::-1] if mirror else upright
    return np.ascontiguousarray(np.rot90(frame, k=rotation_cw // 90))  # rot90 turns counter-clockwise


def write_case(
    path: Path,
    count: int = 30,
    fps: int = 10,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    offset_s: float = 0.0,
    leading_cut: int = 0,
    rotation_cw: int = 0,
    mirror: bool = False,
    sample_aspect: Fraction | None = None,
    live: bool = False,
    frame_times: list[float] | None = None,
    pix_fmt: str = "yuv420p",
    container_format: str | None = None,
) -> Case:
    """Write ``count`` painted frames to ``path`` and return the case.

    ``offset_s``: the first shown frame's presentation timestamp (cuts, segments).
    ``leading_cut``: that many frames before it are in the file, with negative timestamps, as
    ``ffmpeg -ss ... -c copy`` leaves them (mp4 hides them with an edit list).
    ``rotation_cw``/``mirror``: the display matrix (frames stored turned the other way).
    ``sample_aspect``: stored pixels this much wider than tall (the stored frame is narrower).
    ``live``: written as a stream (no duration, no index), as a browser records.
    ``frame_times``: presentation times (seconds) of the frames, for variable frame rate.
    """
    path = Path(path)
    time_base = Fraction(1, 1000 * fps) if frame_times is not None else Fraction(1, fps)
    if frame_times is None:
        frame_times = [i / fps for i in range(count)]
    times = [offset_s + t - leading_cut / fps for t in frame_times]
    options = (
        {"qp": "10", "preset": "veryfast", "g": str(2 * fps)} if options is None and codec == "libx264" else options
    )
    width = WIDTH
    if sample_aspect is not None:
        width = int(round(WIDTH / sample_aspect / 2) * 2)
    raw = open(path, "wb") if live else None
    target = _NonSeekable(raw) if live else str(path)
    try:
        with av.open(
            target, mode="w", format=container_format or (path.suffix.lstrip(".") if live else None)
        ) as container:
            stream = container.add_stream(codec, rate=fps)
            upright_h, upright_w = HEIGHT, width
            stored_h, stored_w = (upright_w, upright_h) if rotation_cw in (90, 270) else (upright_h, upright_w)
            stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, pix_fmt
            stream.codec_context.time_base = time_base
            if options:
                stream.options = options
            if rotation_cw or mirror:
                stream.set_display_rotation(-rotation_cw, hflip=mirror)
            if sample_aspect is not None:
                stream.codec_context.sample_aspect_ratio = sample_aspect

            def mux(packets):
                for packet in packets:
                    if packet.pts is not None:
                        shift = round((offset_s - leading_cut / fps) / packet.time_base)
                        packet.pts += shift
                        packet.dts += shift
                    container.mux(packet)

            for i, t in enumerate(frame_times):
                upright = painted_frame(i)
                if sample_aspect is not None:  # squeeze to the stored width
                    columns = np.clip(
                        np.round((np.arange(width) + 0.5) * WIDTH / width - 0.5).astype(int), 0, WIDTH - 1
                    )
                    upright = upright[:, columns]
                frame = av.VideoFrame.from_ndarray(_stored(upright, rotation_cw, mirror), format="rgb24")
                frame.pts, frame.time_base = round(t / time_base), time_base
                mux(stream.encode(frame))
            mux(stream.encode())
    finally:
        if raw is not None:
            raw.close()
    shown = [(t, i) for i, t in enumerate(times) if i >= leading_cut]
    origin = shown[0][0]
    last_duration = 1 / fps  # what the encoder gives each frame, the last one too
    return Case(path, [t - origin for t, _ in shown], [i for _, i in shown], times[-1] - origin + last_duration)


# The conditions of real files: name -> how to write it (into a folder).
CONDITIONS: dict[str, Callable[[Path], Case]] = {
    "plain.mp4": lambda d: write_case(d / "plain.mp4"),
    "rotated_cw90.mp4": lambda d: write_case(d / "rotated_cw90.mp4", rotation_cw=90),
    "rotated_cw270.mov": lambda d: write_case(d / "rotated_cw270.mov", rotation_cw=270),
    "rotated_180.mp4": lambda d: write_case(d / "rotated_180.mp4", rotation_cw=180),
    "mirrored.mp4": lambda d: write_case(d / "mirrored.mp4", mirror=True),
    "rotated_cw90_mirrored.mp4": lambda d: write_case(d / "rotated_cw90_mirrored.mp4", rotation_cw=90, mirror=True),
    "rotated_cw270_mirrored.mov": lambda d: write_case(d / "rotated_cw270_mirrored.mov", rotation_cw=270, mirror=True),
    "flipped_vertically.mp4": lambda d: write_case(d / "flipped_vertically.mp4", rotation_cw=180, mirror=True),
    "offset_1.4s.mp4": lambda d: write_case(d / "offset_1.4s.mp4", offset_s=1.4),
    "offset_10s.mp4": lambda d: write_case(d / "offset_10s.mp4", offset_s=10.0),
    "offset_1.4s.mkv": lambda d: write_case(d / "offset_1.4s.mkv", offset_s=1.4),
    "offset_10s.mkv": lambda d: write_case(d / "offset_10s.mkv", offset_s=10.0),
    "edit_list.mp4": lambda d: write_case(d / "edit_list.mp4", leading_cut=5),
    "segment.ts": lambda d: write_case(d / "segment.ts", offset_s=1.4),
    "browser_vp8.webm": lambda d: write_case(
        d / "browser_vp8.webm", codec="libvpx", live=True, options={"deadline": "realtime", "cpu-used": "8"}
    ),
    "browser_vp9.webm": lambda d: write_case(
        d / "browser_vp9.webm", codec="libvpx-vp9", live=True, options={"deadline": "realtime", "cpu-used": "8"}
    ),
    "streamed.mkv": lambda d: write_case(d / "streamed.mkv", live=True, container_format="matroska"),
    "vp9_altref.webm": lambda d: write_case(
        d / "vp9_altref.webm",
        count=150,
        fps=30,
        codec="libvpx-vp9",
        options={"auto-alt-ref": "1", "lag-in-frames": "16", "crf": "20", "b": "0"},
    ),
    "av1.mp4": lambda d: write_case(
        d / "av1.mp4", count=150, fps=30, codec="libsvtav1", options={"preset": "10", "svtav1-params": "log-level=0"}
    ),
    "av1.webm": lambda d: write_case(
        d / "av1.webm", count=150, fps=30, codec="libsvtav1", options={"preset": "10", "svtav1-params": "log-level=0"}
    ),
    "hevc.mp4": lambda d: write_case(
        d / "hevc.mp4",
        count=150,
        fps=30,
        codec="libx265",
        options={"x265-params": "log-level=none:bframes=4:keyint=250", "crf": "18"},
    ),
    "mjpeg.avi": lambda d: write_case(d / "mjpeg.avi", codec="mjpeg", pix_fmt="yuvj420p", options={}),
    "vfr.mkv": lambda d: write_case(
        d / "vfr.mkv", frame_times=[0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.0, 1.35, 1.4, 2.0, 2.05]
    ),
    # Phones drop frames: one frame shown for 0.8 s, with B-frames around it.
    "vfr.mp4": lambda d: write_case(
        d / "vfr.mp4", frame_times=[0.0, 0.1, 0.2, 0.3, 1.1, 1.2, 1.25, 1.3, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5]
    ),
    "one_frame.mp4": lambda d: write_case(d / "one_frame.mp4", count=1),
    "anamorphic.mp4": lambda d: write_case(d / "anamorphic.mp4", sample_aspect=Fraction(4, 3)),
}
