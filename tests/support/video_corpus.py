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
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vidaccel_train.data.contract import ClipContract

HEIGHT, WIDTH = 48, 64
BITS = 8
_BAND = 12  # rows of the index band
_CORNER = 12  # side of the bottom-right marker


def sampling(num_frames: int, sampling_rate: int, target_fps: float = 30.0) -> ClipContract:
    """A clip contract for tests that only sample frames (they give their own transform): these
    counts, and a tiny model's spatial sides."""
    return ClipContract(num_frames, sampling_rate, 16, (16, 16), 16, target_fps)


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
    header_rate: Fraction | int | None = None,
    cover_art: bool = False,
    x264_build: int | None = None,
    stripes: bool = False,
    container_options: dict[str, str] | None = None,
) -> Case:
    """Write ``count`` painted frames to ``path`` and return the case.

    ``offset_s``: the first shown frame's presentation timestamp (cuts, segments).
    ``leading_cut``: that many frames before it are in the file, with negative timestamps, as
    ``ffmpeg -ss ... -c copy`` leaves them (mp4 hides them with an edit list).
    ``rotation_cw``/``mirror``: the display matrix (frames stored turned the other way).
    ``sample_aspect``: stored pixels this much wider than tall (the stored frame is narrower).
    ``live``: written as a stream (no duration, no index), as a browser records.
    ``frame_times``: presentation times (seconds) of the frames, for variable frame rate.
    ``header_rate``: the frame rate the header states (default ``fps``; 0: none, as Firefox's
    MediaRecorder writes; another number: a wrong one, as Chrome's WebM has).
    ``cover_art``: an mp4 whose stream 0 is a JPEG cover picture (disposition ``attached_pic``),
    as mutagen and ``yt-dlp --embed-thumbnail`` write, the video after it.
    ``x264_build``: the x264 version the first packet's SEI states, rewritten to this number.
    ``stripes``: fine vertical stripes beside the index band (detail an encoder must keep).
    ``container_options``: the muxer's options (``{"movflags": "+faststart"}``).
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
            target,
            mode="w",
            format=container_format or (path.suffix.lstrip(".") if live else None),
            options=container_options or {},
        ) as container:
            if cover_art:
                cover = container.add_stream("mjpeg", rate=1)
                cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
                cover.disposition = av.stream.Disposition.attached_pic
            stream = container.add_stream(codec, rate=header_rate or fps)
            upright_h, upright_w = HEIGHT, width
            stored_h, stored_w = (upright_w, upright_h) if rotation_cw in (90, 270) else (upright_h, upright_w)
            stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, pix_fmt
            stream.codec_context.time_base = time_base
            if header_rate == 0:  # no frame rate in the header: the muxer writes none
                stream.codec_context.framerate = Fraction(0, 1)
            if options:
                stream.options = options
            if rotation_cw or mirror:
                stream.set_display_rotation(-rotation_cw, hflip=mirror)
            if sample_aspect is not None:
                stream.codec_context.sample_aspect_ratio = sample_aspect

            first = [True]

            def mux(packets):
                for packet in packets:
                    if first[0] and x264_build is not None:
                        packet = _with_x264_build(packet, x264_build)
                    first[0] = False
                    if header_rate is not None:  # browsers' blocks state no duration either
                        packet.duration = 0
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
                if stripes:
                    upright = upright.copy()
                    upright[_BAND + 4 : _BAND + 20, WIDTH // 2 + 4 : WIDTH - 4] = np.where(
                        np.arange(WIDTH // 2 - 8) // 2 % 2, 220, 20
                    )[None, :, None]
                frame = av.VideoFrame.from_ndarray(_stored(upright, rotation_cw, mirror), format="rgb24")
                frame.pts, frame.time_base = round(t / time_base), time_base
                mux(stream.encode(frame))
            mux(stream.encode())
            if cover_art:
                picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
                for packet in (*cover.encode(picture), *cover.encode()):
                    packet.pts = packet.dts = 0
                    container.mux(packet)
    finally:
        if raw is not None:
            raw.close()
    if cover_art:
        _cover_first(path)
    shown = [(t, i) for i, t in enumerate(times) if i >= leading_cut]
    origin = shown[0][0]
    last_duration = 1 / fps  # what the encoder gives each frame, the last one too
    return Case(path, [t - origin for t, _ in shown], [i for _, i in shown], times[-1] - origin + last_duration)


def _with_x264_build(packet: av.Packet, build: int) -> av.Packet:
    """``packet`` with the x264 version in its SEI ("x264 - core NNN") replaced by ``build``
    (same number of digits: the SEI's length is unchanged)."""
    data = bytes(packet)
    found = re.search(rb"x264 - core (\d+)", data)
    assert found and len(str(build)) == len(found.group(1)), "no x264 version SEI of that length in the first packet"
    patched = av.Packet(data[: found.start(1)] + str(build).encode() + data[found.end(1) :])
    patched.pts, patched.dts, patched.time_base = packet.pts, packet.dts, packet.time_base
    patched.is_keyframe = packet.is_keyframe
    return patched


def _boxes(data: bytes, start: int, end: int):
    at = start
    while at < end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        yield kind, at, size
        at += size


def _cover_first(path: Path) -> None:
    """Move the mp4's ``udta`` box (where the cover picture is, as ``covr``) before its tracks in
    ``moov``, as taggers leave it: FFmpeg then lists the picture as stream 0. Only boxes inside
    ``moov`` move, so no sample offset changes."""
    data = bytearray(path.read_bytes())
    for kind, at, size in _boxes(data, 0, len(data)):
        if kind == b"moov":
            children = list(_boxes(data, at + 8, at + size))
            order = sorted(children, key=lambda c: {b"mvhd": 0, b"udta": 1}.get(c[0], 2))
            data[at + 8 : at + size] = b"".join(bytes(data[a : a + n]) for _, a, n in order)
    path.write_bytes(bytes(data))


def write_audio_with_cover(path: Path) -> None:
    """An audio-only mp4 (one second of AAC) whose stream 0 is a cover picture."""
    with av.open(str(path), "w") as container:
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        audio = container.add_stream("aac", rate=44100)
        for i in range(44):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
        picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
        for packet in (*cover.encode(picture), *cover.encode()):
            packet.pts = packet.dts = 0
            container.mux(packet)
    _cover_first(path)


def decoded_from_start(case: Case) -> Case:
    """``case`` with the reference a player decoding from the start gives (the index each frame
    it shows carries, ``None`` where it carries none): for a stream whose leading SEI changes
    how every frame decodes, as an old x264's does."""
    with av.open(str(case.path)) as container:
        shown = [read_index(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    assert len(shown) == len(case.shown)
    return Case(case.path, case.times, shown, case.end_s, case.notes)


def cut_before_keyframe(case: Case, keyframe: int = 1, lead_packets: int = 4) -> Case:
    """``case`` rewritten without its packets before the ``lead_packets``-th packet (in decode
    order) before its ``keyframe``-th keyframe, as a capture or an HLS segment that starts
    mid-GOP: those leading packets cannot be decoded, and the first frame shown is the
    keyframe's (or, in an open GOP, none of the frames before it either)."""
    with av.open(str(case.path)) as source:
        stream = source.streams.video[0]
        packets = [packet for packet in source.demux(stream) if packet.size]
        keys = [i for i, packet in enumerate(packets) if packet.is_keyframe]
        first = keys[keyframe] - lead_packets
        key_time = float(packets[keys[keyframe]].pts * stream.time_base)
        cut = case.path.with_name(f"{case.path.stem}.cut{case.path.suffix}")
        with av.open(str(cut), "w", format=source.format.name.split(",")[0]) as target:
            copy = target.add_stream_from_template(stream)
            for packet in packets[first:]:
                packet.stream = copy
                target.mux(packet)
        origin = float(stream.start_time * stream.time_base)
    os.replace(cut, case.path)
    key = key_time - origin  # the keyframe's time in the case's reference (from its first frame)
    k = bisect.bisect_left(case.times, key - 1e-6)
    return Case(
        case.path,
        [t - key for t in case.times[k:]],
        case.shown[k:],
        case.end_s - key,
        {**case.notes, "first_packet_s": float(packets[first].pts * stream.time_base) - key_time},
    )


def truncate(case: Case, keep: float = 0.55) -> Case:
    """``case`` with its file cut after ``keep`` of its media data, the index (an mp4's ``moov``
    written first) left whole: a download cut short. ``notes["cut_s"]``: when the data ends."""
    with av.open(str(case.path)) as container:
        stream = container.streams.video[0]
        samples = sorted((p.pos, p.size, float(p.pts * stream.time_base)) for p in container.demux(stream) if p.size)
    first, last = samples[0][0], samples[-1][0] + samples[-1][1]
    size = int(first + keep * (last - first))
    with open(case.path, "r+b") as stream:
        stream.truncate(size)
    cut_s = min(t for pos, n, t in samples if pos + n > size)
    return Case(case.path, case.times, case.shown, case.end_s, {**case.notes, "cut_s": cut_s})


# Firefox's MediaRecorder: frames about 25 a second, irregularly, and no rate in the header;
# Chrome's: 24 a second after an irregular start, and a header rate that is not it.
_FIREFOX_TIMES = [
    round(i * 0.04 + (0.011 if i % 3 == 1 else 0.0) - (0.007 if i % 5 == 2 else 0.0), 3) for i in range(75)
]
_CHROME_TIMES = [0.0, 0.12, 0.2] + [round(0.25 + i / 24, 3) for i in range(69)]
_X264 = {"qp": "10", "preset": "veryfast"}


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
    # Issue #43, round two: files as users have them.
    "cover_art.mp4": lambda d: write_case(d / "cover_art.mp4", cover_art=True),
    # An old x264's High 4:4:4 (lossless, CAVLC, 8x8 intra): FFmpeg decodes it with that
    # version's workaround, which only a decoder that saw the first packet's SEI applies.
    "old_x264_444.mp4": lambda d: decoded_from_start(
        write_case(
            d / "old_x264_444.mp4",
            pix_fmt="yuv444p",
            options={"preset": "medium", "x264-params": "qp=0:keyint=10:cabac=0:partitions=i8x8"},
            x264_build=150,
            stripes=True,
        )
    ),
    "mid_gop.ts": lambda d: cut_before_keyframe(
        write_case(
            d / "mid_gop.ts",
            count=50,
            options={**_X264, "x264-params": "bframes=3:keyint=10:min-keyint=10:scenecut=0"},
        )
    ),
    # An open-GOP interlaced broadcast capture: the leading B-frames of its first GOP refer to a
    # GOP that is not in the file.
    "open_gop.ts": lambda d: cut_before_keyframe(
        write_case(
            d / "open_gop.ts",
            count=50,
            options={
                **_X264,
                "x264-params": "bframes=3:b-adapt=0:keyint=12:min-keyint=12:scenecut=0:open-gop=1:interlaced=1",
            },
        ),
        lead_packets=3,
    ),
    "bframes.avi": lambda d: write_case(d / "bframes.avi", options={**_X264, "x264-params": "bframes=3:keyint=20"}),
    "program.mpg": lambda d: write_case(
        d / "program.mpg",
        count=125,
        fps=25,
        codec="mpeg2video",
        options={"bf": "2", "g": "12", "qscale": "2", "threads": "1"},
    ),
    "interlaced.vob": lambda d: write_case(
        d / "interlaced.vob",
        count=125,
        fps=25,
        codec="mpeg2video",
        container_format="vob",
        options={"bf": "2", "g": "15", "qscale": "2", "flags": "+ildct+ilme", "threads": "1"},
    ),
    "firefox.webm": lambda d: write_case(
        d / "firefox.webm",
        count=len(_FIREFOX_TIMES),
        fps=25,
        codec="libvpx",
        live=True,
        frame_times=_FIREFOX_TIMES,
        header_rate=0,
        options={"deadline": "realtime", "cpu-used": "8"},
    ),
    "chrome.webm": lambda d: write_case(
        d / "chrome.webm",
        count=len(_CHROME_TIMES),
        fps=24,
        codec="libvpx-vp9",
        live=True,
        frame_times=_CHROME_TIMES,
        header_rate=Fraction(50, 3),
        options={"deadline": "realtime", "cpu-used": "8"},
    ),
}
