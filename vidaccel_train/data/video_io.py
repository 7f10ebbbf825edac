"""The one video reader of every path (training clips, multi-view testing, ``predict``, the
export's verification, the dataset check and the training copy), and beside it the encoders,
with PyAV: :func:`write_video` (the generated data, test files) and :func:`transcode` (the
random-access training copy, the demo's player copy).

The reader's contract: the frame at time ``t`` is the frame a player shows at ``t``,

- with ``t`` in seconds from the stream's first presented frame (its presentation timestamp
  is ``VideoInfo.start_s``, which is often not 0: cuts made with ``ffmpeg -ss ... -c copy``,
  MPEG-TS/HLS segments, recordings that start mid-stream);
- upright, as the stream's display matrix says (phone recordings: rotations of 90, 180 and
  270 degrees, and mirrors), which PyAV reports but does not apply;
- at the display aspect with ``display_aspect="square"`` (anamorphic files resampled to square
  pixels, as a player does), or as stored with ``"stored"``.

The first presented frame is the first one decodable: a stream that starts mid-GOP (broadcast
captures, HLS segments) or with the leading frames of an open GOP starts at its first keyframe,
and frames shown before it are never returned, whatever the decoder's thread count. The video
stream is the one a player picks (cover art, an attached picture, is not video).

The duration is the stream's own (mp4, mov, avi, MPEG-TS) or, where the stream has none
(Matroska and WebM, whose container duration counts from timestamp 0, browser recordings that
have none at all) or only an estimate (MPEG program streams), the end of the last packet,
found with one seek (program streams: one pass over the packets) and remembered for the file in
this process. Decoding seeks to the keyframe before the first wanted time and stops after the
last one, so a clip of a long video costs only the frames it spans; program streams, whose
timestamps after a seek are off by a frame or two, are read from the start instead, decoding
only the GOPs that hold wanted frames. A file whose index lists frames its data no longer holds
(a download cut short) is refused, by every path alike.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from vidaccel_train.errors import ConfigError, VideoDecodeError
from vidaccel_train.files import atomic_path

if TYPE_CHECKING:
    import torch

DISPLAY_ASPECTS = ("square", "stored")

# Codecs for which decoding with non-reference frames skipped is proven frame-exact (tests/
# test_real_world_video.py): every wanted frame equals the one a full decode shows then. AV1 is
# not among them (libdav1d then returns some frames one early); unknown codecs decode every frame.
SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mjpeg"})


@dataclass(frozen=True)
class Orientation:
    """How a stored frame becomes the upright frame a player shows: optionally transposed
    (rows become columns), then mirrored left-right and/or top-bottom. The eight cases are the
    display matrices of 0/90/180/270 degree rotations with and without a mirror."""

    transpose: bool = False
    flip_horizontal: bool = False
    flip_vertical: bool = False

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """From FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX`` (9 int32, 16.16 fixed point), which maps
        a stored pixel ``(x, y)`` to ``(a x + c y, b x + d y)`` on screen. Rotations other than
        multiples of 90 degrees are rounded to the nearest multiple."""
        a, b, c, d = (float(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x stays x: no transpose
            return cls(False, a < 0, d < 0)
        # Screen x comes from stored y (x' = c y), screen y from stored x (y' = b x).
        return cls(True, c < 0, b < 0)

    @property
    def rotation(self) -> int:
        """Clockwise degrees a player turns the stored frame (0, 90, 180 or 270), before ``mirrored``."""
        if self.transpose:
            return 90 if self.flip_horizontal != self.mirrored else 270
        return 180 if self.flip_vertical else 0

    @property
    def mirrored(self) -> bool:
        """Whether the display is a mirror image of the stored frame (after the rotation)."""
        if self.transpose:
            return self.flip_horizontal == self.flip_vertical
        return self.flip_horizontal != self.flip_vertical

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """``(..., H, W, C)`` stored -> ``(..., H', W', C)`` upright."""
        if self.transpose:
            frames = frames.transpose(-3, -2)
        dims = [d for d, flip in ((-3, self.flip_vertical), (-2, self.flip_horizontal)) if flip]
        return frames.flip(dims) if dims else frames


UPRIGHT = Orientation()


@dataclass(frozen=True)
class VideoInfo:
    """What the reader knows of a file's first video stream.

    ``duration_s``: seconds from the first presented frame to the end of the last.
    ``fps``: the stream's average frame rate, measured from the packets' timestamps where the
    container's rate cannot be trusted (Matroska/WebM, whose rate is optional and which browsers
    write wrong or not at all); 0 if unknown.
    ``codec``: the codec's name (``h264``, ``av1``), not the decoder's.
    ``width``, ``height``: pixels of the frames the reader returns (upright; at the display
    aspect when read with ``display_aspect="square"``); ``coded_width``, ``coded_height``: as stored.
    ``start_s``: the presentation timestamp of the first frame shown, seconds on the stream's clock.
    ``duration_source``: ``"stream"`` (the header) or ``"last packet"`` (none in the header, or
    only an estimate).
    ``orientation``: from the display matrix (``UPRIGHT`` when there is none).
    ``sample_aspect``: display width of a stored pixel over its height (1.0: square pixels).
    """

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str = ""
    start_s: float = 0.0
    duration_source: str = "stream"
    orientation: Orientation = UPRIGHT
    sample_aspect: float = 1.0
    coded_width: int = 0
    coded_height: int = 0

    @property
    def rotation(self) -> int:
        return self.orientation.rotation

    @property
    def anamorphic(self) -> bool:
        return abs(self.sample_aspect - 1.0) > 1e-3


def check_display_aspect(display_aspect: str) -> str:
    if display_aspect not in DISPLAY_ASPECTS:
        raise ConfigError(f"data.display_aspect must be one of {', '.join(DISPLAY_ASPECTS)}, got {display_aspect!r}")
    return display_aspect


# Streams FFmpeg lists as video that are not: cover art (mutagen, yt-dlp --embed-thumbnail)
# and thumbnails, one picture each.
_NOT_VIDEO = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails

# Formats whose seeks land on frames timed a frame or two off (the MPEG program stream's parser
# times a frame from the pack it lands in): read from the start, never seeking.
_READ_FROM_START_FORMATS = frozenset({"mpeg", "mpegvideo"})
# Formats that store no presentation timestamps, only one per packet in decode order (AVI):
# the frames, which come out in presentation order, take those timestamps in order.
_DECODE_ORDER_FORMATS = frozenset({"avi"})
# Formats whose frame rate is an optional header field that recorders write wrong or not at all.
_UNTRUSTED_RATE_FORMATS = ("matroska", "webm")


def _video_stream(container: av.container.InputContainer, path: Path, threads: int = 0) -> av.video.stream.VideoStream:
    """The video stream a player shows: FFmpeg's best (``av_find_best_stream``: the default
    stream, then the one with most frames), never cover art or a thumbnail."""
    candidates = [s for s in container.streams.video if not s.disposition & _NOT_VIDEO]
    if not candidates:
        raise VideoDecodeError(f"{path}: no video stream (audio-only or not a video file)")
    try:
        best = container.streams.best("video")
    except (av.error.FFmpegError, ValueError):
        best = None
    if best not in candidates:
        defaults = [s for s in candidates if s.disposition & av.stream.Disposition.default]
        best = (defaults or candidates)[0]
    stream = best
    if stream.codec_context is None:  # FFmpeg has no decoder for this stream's codec
        raise VideoDecodeError(f"{path}: video codec not supported by this FFmpeg build (no decoder)")
    stream.thread_type = "AUTO"
    stream.thread_count = threads
    return stream


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = os.stat(path)
    return str(path), stat.st_size, stat.st_mtime_ns


# The end of the last packet of files whose header has no stream duration, by (path, size,
# mtime): found once per file and process (a training worker reads each file every epoch).
_END_CACHE: dict[tuple[str, int, int], float] = {}
_END_CACHE_LIMIT = 1_000_000


def _last_packet_end(container, stream, path: Path, scan: bool = False, rate: float = 0.0) -> float:
    """Seconds on the stream's clock where the last packet ends: one seek to the end and the
    packets after the last keyframe (a file without an index, or with ``scan``, is read
    through, not decoded). ``rate``: frames per second measured where the stream's own cannot
    be trusted; a packet then lasts a frame at that rate, as its duration, which FFmpeg derives
    from the stream's rate when the file states none, is no better."""
    key = _file_key(path)
    if key in _END_CACHE:
        return _END_CACHE[key]
    time_base = float(stream.time_base)
    stated = float(stream.average_rate or stream.guessed_rate or 0.0)
    trust_durations = not rate or rate == stated
    rate = rate or stated
    end = -math.inf
    for attempt in ("scan",) if scan else ("seek", "scan"):
        try:
            if attempt == "seek":
                container.seek(2**62, stream=stream, backward=True, any_frame=False)
            else:
                container.seek(0, stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                if packet.duration and trust_durations:
                    length = packet.duration * time_base
                else:
                    length = 1 / rate if rate > 0 else 0.0
                end = max(end, packet.pts * time_base + length)
        except av.error.FFmpegError:
            continue
        if math.isfinite(end):
            break
    container.seek(0, stream=stream, backward=True, any_frame=False)  # leave the file where it was opened
    if len(_END_CACHE) >= _END_CACHE_LIMIT:
        _END_CACHE.clear()
    _END_CACHE[key] = end
    return end


@dataclass(frozen=True)
class _Lead:
    """What the first packets of a stream tell: the presentation time (stream clock, seconds)
    of the first keyframe in decode order (``None``: none among them), the x264 version its
    first packet states, and the frame rate measured from the packets' timestamps (0: not
    measured)."""

    keyframe_s: float | None
    x264_build: int | None
    rate: float


_LEAD_CACHE: dict[tuple, _Lead] = {}
# How many packets to look through for the first keyframe, and to measure a frame rate over.
_LEAD_PACKETS = 1000
_RATE_PACKETS = 120
_X264_VERSION = re.compile(rb"x264 - core (\d+)")


def _lead(container, stream, path: Path, measure_rate: bool) -> _Lead:
    """The stream's :class:`_Lead`, from its first packets (demuxed, not decoded; once per file
    and process); the file is left where it was opened."""
    key = (*_file_key(path), stream.index, measure_rate)
    cached = _LEAD_CACHE.get(key)
    if cached is not None:
        return cached
    time_base = float(stream.time_base)
    keyframe, build, stamps, count = None, None, [], 0
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            if count == 0 and stream.codec_context.name == "h264":
                found = _X264_VERSION.search(bytes(packet))
                build = int(found.group(1)) if found else None
            count += 1
            if packet.pts is not None:
                stamps.append(packet.pts)
                if keyframe is None and packet.is_keyframe:
                    keyframe = packet.pts * time_base
            if (keyframe is not None and (not measure_rate or len(stamps) >= _RATE_PACKETS)) or count >= _LEAD_PACKETS:
                break
    except av.error.FFmpegError:
        pass  # a damaged start: the header's timing stands, and decoding says what is wrong
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)  # leave the file where it was opened
    except av.error.FFmpegError:
        pass
    stamps.sort()
    # The typical spacing of frames: browsers' recordings start irregularly and jitter.
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]) if b > a)
    rate = 1 / (gaps[len(gaps) // 2] * time_base) if len(gaps) >= 2 else 0.0
    lead = _Lead(keyframe, build, rate if measure_rate else 0.0)
    if len(_LEAD_CACHE) >= _END_CACHE_LIMIT:
        _LEAD_CACHE.clear()
    _LEAD_CACHE[key] = lead
    return lead


def _truncation(container, stream, path: Path) -> str | None:
    """Why the file lacks data its index lists (a download cut short), or ``None``: the index
    (mp4, mov, AVI) gives every packet's position and size, the file is shorter than the last."""
    entries = stream.index_entries
    count = len(entries)
    if not count:
        return None
    size = os.path.getsize(path)
    if all(entries[i].pos + entries[i].size <= size for i in range(max(0, count - 16), count)):
        return None
    missing = [entries[i] for i in range(count) if entries[i].size > 0 and entries[i].pos + entries[i].size > size]
    if not missing:
        return None
    time_base = float(stream.time_base)
    origin = stream.start_time or 0
    rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    if stream.duration:
        listed = stream.duration * time_base
    else:
        listed = (max(entries[i].timestamp for i in range(count)) - origin) * time_base + (1 / rate if rate > 0 else 0)
    cut = (min(e.timestamp for e in missing) - origin) * time_base
    return f"truncated: the index lists frames to {listed:.2f} s, the data ends before {max(cut, 0.0):.2f} s"


@dataclass(frozen=True)
class _Reading:
    """How the reader goes through a stream, beyond its :class:`VideoInfo`: the frame rate its
    margins use, whether it never seeks (``from_start``), whether frames take the packets'
    decode timestamps in order (``decode_order``)."""

    rate: float
    from_start: bool = False
    decode_order: bool = False


def _open_video(
    container, path: Path, threads: int, display_aspect: str = "stored"
) -> tuple[av.video.stream.VideoStream, VideoInfo, _Reading]:
    """The video stream of an open file, set up for decoding, its info and how to read it.

    Raises:
        VideoDecodeError: no video stream, no decoder, or the file is cut short.
    """
    stream = _video_stream(container, path, threads)
    fmt = container.format.name
    truncated = _truncation(container, stream, path)
    if truncated:
        raise VideoDecodeError(f"{path}: {truncated}")
    header_rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    untrusted = (
        any(name in fmt for name in _UNTRUSTED_RATE_FORMATS)
        or not stream.average_rate
        or header_rate * float(stream.time_base) > 0.5  # the rate is the clock's tick, not the frames'
    )
    lead = _lead(container, stream, path, measure_rate=untrusted)
    if lead.x264_build is not None:  # a decoder that starts after a seek never sees that SEI
        stream.codec_context.options = {**(stream.codec_context.options or {}), "x264_build": str(lead.x264_build)}
    # A stated rate is a nominal one: frames may come slower (dropped, variable rate), never faster.
    fps = header_rate
    if untrusted and lead.rate > 0 and (not stream.average_rate or lead.rate > 1.05 * header_rate):
        fps = lead.rate
    from_start, decode_order = fmt in _READ_FROM_START_FORMATS, fmt in _DECODE_ORDER_FORMATS
    # (a format without presentation timestamps has no keyframe time to start from)
    keyframe_s = None if decode_order else lead.keyframe_s
    info = _info(container, stream, path, display_aspect, keyframe_s, fps, measure_end=from_start)
    return stream, info, _Reading(fps, from_start, decode_order)


def _info(
    container,
    stream,
    path: Path,
    display_aspect: str = "stored",
    first_keyframe_s: float | None = None,
    fps: float | None = None,
    measure_end: bool = False,
) -> VideoInfo:
    """The stream's timing, codec and stored geometry (upright: the orientation comes with the
    frames). The first frame shown is not before the first keyframe (``first_keyframe_s``):
    packets before it (a capture that starts mid-GOP, an open GOP's leading frames) cannot be
    decoded. ``measure_end``: the header's duration is an estimate, find the last packet's end."""
    if fps is None:
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    time_base = float(stream.time_base)
    if stream.start_time is not None:
        header_start = stream.start_time * time_base
    elif container.start_time is not None:
        header_start = container.start_time / av.time_base
    else:
        header_start = 0.0
    start = max(header_start, first_keyframe_s) if first_keyframe_s is not None else header_start
    if stream.duration is not None and stream.duration > 0 and not measure_end:
        duration, source = header_start + stream.duration * time_base - start, "stream"
    else:
        duration, source = _last_packet_end(container, stream, path, measure_end, fps) - start, "last packet"
        if not math.isfinite(duration):
            duration = math.nan
    sar = stream.sample_aspect_ratio
    sample_aspect = float(sar) if sar and sar > 0 else 1.0
    coded_width, coded_height = stream.width, stream.height
    width = _display_width(coded_width, sample_aspect) if display_aspect == "square" else coded_width
    height = coded_height
    return VideoInfo(
        duration,
        fps,
        width,
        height,
        stream.codec_context.codec.canonical_name,  # the codec's name, not the decoder's (libdav1d)
        start,
        source,
        UPRIGHT,
        sample_aspect,
        coded_width,
        coded_height,
    )


def _oriented(info: VideoInfo, orientation: Orientation) -> VideoInfo:
    """``info`` with the orientation the decoded frames carry (width and height swapped by a transpose)."""
    if orientation == info.orientation:
        return info
    width, height = (
        (info.height, info.width) if orientation.transpose != info.orientation.transpose else (info.width, info.height)
    )
    return dataclasses.replace(info, orientation=orientation, width=width, height=height)


def _display_width(coded_width: int, sample_aspect: float) -> int:
    """Stored width at square pixels, as players scale it (the height is kept)."""
    return max(1, round(coded_width * sample_aspect))


def _frame_orientation(frame: av.VideoFrame) -> Orientation:
    matrix = frame.side_data.get("DISPLAYMATRIX")
    if matrix is None:
        return UPRIGHT
    return Orientation.from_display_matrix(np.frombuffer(bytes(matrix), dtype=np.int32))


def _open_error(path: Path, err: Exception, doing: str) -> VideoDecodeError:
    return VideoDecodeError(f"{path}: {doing} ({err})")


def probe(path: str | Path, display_aspect: str = "stored") -> VideoInfo:
    """The file's :class:`VideoInfo`, with the orientation of its first frame (one frame decoded).

    Raises:
        VideoDecodeError: not a video file, no video stream (audio with cover art included), no
            decoder, a file cut short, or nothing decodable.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream, info, reading = _open_video(container, path, 1, display_aspect)
            first = next(_shown_frames(container, stream, info, reading), None)
            if first is None:
                raise VideoDecodeError(f"{path}: no decodable frames")
            return _oriented(info, _frame_orientation(first[1]))
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise _open_error(path, err, "cannot open as video") from err


def read_clip(
    path: str | Path,
    choose_timestamps: Callable[[VideoInfo], Sequence[float]],
    threads: int = 0,
    display_aspect: str = "stored",
) -> tuple[torch.Tensor, VideoInfo]:
    """Open ``path`` once, let ``choose_timestamps`` pick times (seconds from the first frame)
    from its info, decode the frames a player shows then.

    ``threads`` are FFmpeg's decoder threads: 0 lets FFmpeg choose (about one per core), 1 decodes
    in the calling thread, which is faster when loader workers already fill the cores. The
    frames and the verdict do not depend on them.
    ``display_aspect``: ``"square"`` resamples anamorphic frames to square pixels (the width
    scaled, as players do), ``"stored"`` keeps the stored pixels.

    Returns uint8 ``(T, 3, H, W)`` in the order the timestamps were given (they may repeat or
    overlap, as the clips of a multi-view test do), upright, and the info (``choose_timestamps``
    sees it before any frame is decoded, so without the orientation). Each timestamp takes the
    last frame shown at or before it; timestamps before the first frame take the first frame,
    past the end the last frame.

    Raises:
        VideoDecodeError: the file cannot be opened or decoded, or holds less than its index or
            header lists (a download cut short); the message names it and says why.
    """
    path = Path(path)
    check_display_aspect(display_aspect)
    try:
        with av.open(str(path)) as container:
            stream, info, reading = _open_video(container, path, threads, display_aspect)
            requested = [float(t) for t in choose_timestamps(info)]
            order = sorted(range(len(requested)), key=requested.__getitem__)
            size = (info.width, info.height)  # every frame at the stream's (display) size
            # Past the end is the last frame: ask for the instant before the end (no seek beyond it).
            limit = info.duration_s - 1e-3 if math.isfinite(info.duration_s) else math.inf
            wanted = [info.start_s + min(requested[i], limit) for i in order]
            decoded, orientation = _decode_span(container, stream, wanted, size, info, reading, path)
            frames = [None] * len(requested)
            for slot, frame in zip(order, decoded):
                frames[slot] = frame
            if not frames or any(f is None for f in frames):
                raise VideoDecodeError(f"{path}: no decodable frames")
            stacked = np.stack(frames)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise _open_error(path, err, "decoding failed") from err
    import torch  # on first use: the live reader decodes without it

    upright = orientation.apply(torch.from_numpy(stacked))
    return upright.permute(0, 3, 1, 2), _oriented(info, orientation)


def read_frames_at(path: str | Path, timestamps_s: Sequence[float], display_aspect: str = "stored") -> torch.Tensor:
    """Decode the frames shown at fixed ``timestamps_s`` (seconds from the first frame) as
    uint8 ``(T, 3, H, W)``; see :func:`read_clip`."""
    return read_clip(path, lambda _info: timestamps_s, display_aspect=display_aspect)[0]


def iter_frames(path: str | Path, threads: int = 0) -> Iterator[tuple[float, av.VideoFrame, VideoInfo]]:
    """Every frame of ``path`` a player shows, in presentation order, as ``(seconds from the
    first frame, the frame as stored, the info with its orientation)``: for re-encoding a whole
    file.

    Raises:
        VideoDecodeError: the file cannot be opened or decoded, or holds less than its index or
            header lists (raised after the frames it holds); the message names it.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream, info, reading = _open_video(container, path, threads)
            last = None
            for t, frame in _shown_frames(container, stream, info, reading):
                info = _oriented(info, _frame_orientation(frame))
                last = t
                yield t - info.start_s, frame, info
            if last is not None:
                _check_complete(path, info, reading, last)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise _open_error(path, err, "decoding failed") from err


class _FrameClock:
    """The presentation time (seconds, stream clock) of each decoded frame: its timestamp, or,
    in a format that stores none (AVI: a timestamp per packet, in decode order), the fed
    packets' timestamps in increasing order, as frames come out in presentation order."""

    def __init__(self, stream, decode_order: bool):
        self.time_base = float(stream.time_base)
        self.pending: list[int] | None = [] if decode_order else None

    def fed(self, packet: av.Packet) -> None:
        if self.pending is not None and packet.size and packet.dts is not None:
            heapq.heappush(self.pending, packet.dts)

    def reset(self) -> None:
        if self.pending is not None:
            self.pending.clear()

    def time(self, frame: av.VideoFrame) -> float | None:
        if self.pending is not None:
            return heapq.heappop(self.pending) * self.time_base if self.pending else None
        return None if frame.pts is None else frame.pts * self.time_base


def _shown_frames(container, stream, info: VideoInfo, reading: _Reading) -> Iterator[tuple[float, av.VideoFrame]]:
    """``(seconds on the stream's clock, frame)`` of every frame shown, from where the file is:
    frames before the first shown (leading frames that cannot be decoded, which some decoders
    and thread counts output) are left out."""
    clock = _FrameClock(stream, reading.decode_order)
    for packet in container.demux(stream):
        clock.fed(packet)
        for frame in packet.decode():
            t = clock.time(frame)
            if t is not None and t >= info.start_s - 1e-6:
                yield t, frame


def _check_complete(path: Path, info: VideoInfo, reading: _Reading, last_s: float) -> None:
    """Raise unless the frames decoded to the end of the file (the last one shown at
    ``last_s``, stream clock) reach the end its header gives."""
    frame_s = 1 / reading.rate if reading.rate > 0 else 0.0
    end = info.start_s + info.duration_s
    if math.isfinite(end) and end - (last_s + frame_s) > max(2 * frame_s, 0.25):
        raise VideoDecodeError(
            f"{path}: truncated: the header lists frames to {info.duration_s:.2f} s, the data ends at "
            f"{last_s + frame_s - info.start_s:.2f} s (a download or copy cut short)"
        )


# Frames decoded only to reach the next wanted timestamp need not be complete: FFmpeg may skip
# non-reference frames (nothing else is predicted from them) shown this many frame durations or
# more before it. The frame shown at a wanted instant is within one frame duration of it.
_SKIP_MARGIN_FRAMES = 2


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 at ``size`` ``(width, height)``: the display width of an anamorphic
    stream, and one size for every frame of a stream whose frame size changes midway (browser
    and WebRTC recordings), scaled in the same pass as the colour conversion."""
    if (frame.width, frame.height) == size:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BILINEAR").to_ndarray()


def _decode_span(
    container,
    stream,
    wanted: list[float],
    size: tuple[int, int],
    info: VideoInfo,
    reading: _Reading,
    path: Path,
):
    """The frame shown at each of the sorted ``wanted`` times (seconds on the stream's clock),
    as ``(H, W, 3)`` arrays at ``size`` ``(width, height)``, and the orientation the frames carry.

    Decodes from the keyframe before the first; non-reference frames well before the next
    wanted time are not decoded at all (codecs of :data:`SKIP_NONREF_CODECS` only), and a wanted
    time more than two keyframe intervals ahead is reached by seeking (files made for random
    access, with a keyframe every few frames, then cost little between far-apart clips). A seek
    that lands past the wanted time (MPEG-TS seeks by byte position) is retried from earlier,
    back to before the first frame (``info.start_s``) if need be. Formats read from the start
    (``reading.from_start``) never seek: the GOPs before the one holding a wanted time are
    demuxed, not decoded. Frames before the first frame shown are never returned."""
    time_base = float(stream.time_base)
    start_s = info.start_s
    rate = reading.rate
    skipping = info.codec in SKIP_NONREF_CODECS and rate > 0 and not reading.decode_order
    # A frame may be skipped when it ends this long before the wanted time (unknown rate or codec: never).
    margin = (_SKIP_MARGIN_FRAMES - 1) / rate if skipping else math.inf
    frame_s = 1 / rate if rate > 0 else 0.0
    codec = stream.codec_context
    clock = _FrameClock(stream, reading.decode_order)
    picked: list[np.ndarray | None] = [None] * len(wanted)
    orientation = None
    next_slot = 0
    previous = None  # (frame, its rgb array once converted, the time it is shown from)
    # The widest gap between keyframes passed since the last seek bounds what a seek costs.
    last_keyframe, keyframe_gap = None, 0.0
    target, backoff = wanted[0], 1.0
    if reading.from_start:
        packets, fresh = _from_start(container, stream, lambda: wanted[min(next_slot, len(wanted) - 1)]), False
    else:
        packets, fresh = _seek(container, stream, target), True  # fresh: no frame decoded since the seek
    seeked_for = 0
    while True:
        packet = next(packets, None)
        if packet is None:
            if fresh and target > start_s - 4.0:  # the seek found nothing to decode: from earlier
                target, backoff = target - backoff, 2 * backoff
                previous, last_keyframe, keyframe_gap = None, None, 0.0
                packets = _seek(container, stream, target)
                clock.reset()
                continue
            break
        if packet.pts is not None:
            t_packet = packet.pts * time_base
            if packet.is_keyframe and (last_keyframe is None or t_packet > last_keyframe):
                if last_keyframe is not None:
                    keyframe_gap = max(keyframe_gap, t_packet - last_keyframe)
                last_keyframe = t_packet
            if (
                not reading.from_start
                and seeked_for < next_slot
                and keyframe_gap > 0
                and wanted[next_slot] - t_packet > 2 * keyframe_gap
            ):
                seeked_for, previous, last_keyframe, keyframe_gap = next_slot, None, None, 0.0
                target, backoff = wanted[next_slot], 1.0
                packets, fresh = _seek(container, stream, target), True
                clock.reset()
                continue
            # Judged by the packet's end, not its start: a frame of a variable-frame-rate file
            # can be shown for several average frame durations.
            shown_until = t_packet + max(packet.duration * time_base if packet.duration else 0.0, frame_s)
            codec.skip_frame = "NONREF" if shown_until < wanted[next_slot] - margin else "DEFAULT"
        clock.fed(packet)
        for frame in packet.decode():
            t = clock.time(frame)
            if t is None or t < start_s - 1e-6:  # before the first frame shown: cannot be decoded
                continue
            if orientation is None:
                orientation = _frame_orientation(frame)
            if fresh:
                fresh = False
                # (a seek to the very first frame can land past it too: back off to before it)
                if t > wanted[next_slot] and t > start_s + 1e-6 and target > start_s - 4.0:
                    target, backoff = target - backoff, 2 * backoff
                    previous, last_keyframe, keyframe_gap = None, None, 0.0
                    packets, fresh = _seek(container, stream, target), True
                    clock.reset()
                    break
            # Every wanted timestamp before this frame is shown by the previous frame.
            while next_slot < len(wanted) and wanted[next_slot] < t:
                source = previous if previous is not None else [frame, None, t]
                if source[1] is None:
                    source[1] = _to_rgb(source[0], size)
                picked[next_slot] = source[1]
                next_slot += 1
            if next_slot == len(wanted):
                return picked, orientation
            previous = [frame, None, t]
    if previous is not None:
        _check_complete(path, info, reading, previous[2])  # past the end: the last frame, if it is the end
        array = previous[1] if previous[1] is not None else _to_rgb(previous[0], size)
        for slot in range(next_slot, len(wanted)):
            picked[slot] = array
    return picked, orientation or UPRIGHT


def _from_start(container, stream, target: Callable[[], float]) -> Iterator[av.Packet]:
    """Packets from the file's start, without seeking to a time: each GOP's packets are held
    until the next keyframe, and dropped undecoded when that keyframe is shown at or before
    ``target()`` (the next wanted time, stream clock), as no frame of theirs is wanted then."""
    time_base = float(stream.time_base)
    container.seek(0, stream=stream, backward=True, any_frame=False)
    held: list[av.Packet] = []
    for packet in container.demux(stream):
        if packet.size and packet.is_keyframe and packet.pts is not None and held:
            if packet.pts * time_base <= target():
                held = []
            else:
                yield from held
                held = []
        held.append(packet)
    yield from held


def _seek(container, stream, time_s: float):
    """Packets from the keyframe at or before ``time_s`` (stream clock) on (the decoder is flushed)."""
    container.seek(int(max(time_s, 0.0) / float(stream.time_base)), stream=stream, backward=True, any_frame=False)
    return iter(container.demux(stream))


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int,
    qp: int = 20,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> None:
    """Encode ``(H, W, 3)`` uint8 frames (yuv420p, even sizes) with PyAV, deterministically:
    H.264 at a constant quantizer ``qp`` by default, or ``codec`` with its ``options``."""
    path = Path(path)
    iterator = iter(frames)
    first = next(iterator)
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Constant quantizer: x264's rate-control lookahead (mbtree) makes crf output vary run to run.
        stream.options = options if options is not None else {"qp": str(qp), "preset": "veryfast", "g": str(fps)}
        for array in (first, *iterator):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass(frozen=True)
class EncodeSettings:
    """How :func:`transcode` encodes: short side at most ``short_side`` pixels, a keyframe every
    ``keyframe_interval`` frames (no B-frames), x264's ``crf`` and ``preset``."""

    short_side: int = 256
    keyframe_interval: int = 16
    crf: int = 23
    preset: str = "veryfast"

    def even_size(self, width: int, height: int) -> tuple[int, int]:
        """The output size: short side ``short_side`` (never upscaled), aspect kept, even sides."""
        scale = min(1.0, self.short_side / min(width, height))
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def transcode(source: str | Path, target: str | Path, settings: EncodeSettings) -> None:
    """Re-encode ``source``'s first video stream to ``target`` (H.264, yuv420p, no audio) as the
    reader sees it: upright (a display matrix is applied to the pixels), timed from its first
    frame, each frame at its original time; non-square pixels keep their sample aspect ratio.
    Raises :class:`VideoDecodeError` naming the file."""
    import torch

    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as partial:  # a failure leaves no file behind
            with av.open(str(partial), mode="w", format="mp4") as writer:
                out = None
                written = 0
                for seconds, frame, info in iter_frames(source):
                    if out is None:
                        out, size = _open_output(writer, info, frame.time_base, settings)
                        time_base = out.codec_context.time_base
                    if info.orientation == UPRIGHT:
                        scaled = frame.reformat(width=size[0], height=size[1], format="yuv420p", interpolation="AREA")
                    else:
                        upright = info.orientation.apply(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                        scaled = av.VideoFrame.from_ndarray(
                            np.ascontiguousarray(upright.numpy()), format="rgb24"
                        ).reformat(width=size[0], height=size[1], format="yuv420p", interpolation="AREA")
                    scaled.pts, scaled.time_base = round(seconds / time_base), time_base
                    for packet in out.encode(scaled):
                        writer.mux(packet)
                    written += 1
                if out is not None:
                    for packet in out.encode():
                        writer.mux(packet)
            if not written:
                raise VideoDecodeError(f"{source}: no decodable frames")
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoDecodeError(f"{source}: cannot be re-encoded ({err})") from err


def _open_output(writer, info: VideoInfo, time_base: Fraction, settings: EncodeSettings):
    """The copy's H.264 stream for frames of ``info`` and their upright, scaled size ``(w, h)``."""
    transposed = info.orientation.transpose
    size = settings.even_size(info.width, info.height)  # upright, stored pixels
    rate = Fraction(info.fps).limit_denominator(100_000) if info.fps > 0 else 30
    out = writer.add_stream("libx264", rate=rate)
    out.width, out.height, out.pix_fmt = *size, "yuv420p"
    out.codec_context.time_base = time_base
    if info.anamorphic:  # turned upright, a stored pixel's width is its height
        aspect = Fraction(info.sample_aspect).limit_denominator(1000)
        out.codec_context.sample_aspect_ratio = 1 / aspect if transposed else aspect
    out.options = {
        "crf": str(settings.crf),
        "preset": settings.preset,
        "x264-params": f"keyint={settings.keyframe_interval}:min-keyint={settings.keyframe_interval}"
        ":scenecut=0:bframes=0",
    }
    return out, size
