"""Video decoding and encoding with PyAV.

Decoding seeks to the keyframe before the first wanted timestamp and stops after the last
one, so a clip of a long video costs only the frames it spans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import av
import numpy as np
import torch


class VideoDecodeError(RuntimeError):
    """A file that cannot be read as video; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    width: int
    height: int


def _video_stream(container: av.container.InputContainer, path: Path, threads: int = 0) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream (audio-only or not a video file)")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for this stream's codec
        raise VideoDecodeError(f"{path}: video codec not supported by this FFmpeg build (no decoder)")
    stream.thread_type = "AUTO"
    stream.thread_count = threads
    return stream


def _info(container, stream) -> VideoInfo:
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    elif stream.frames and fps:
        duration = stream.frames / fps
    else:
        duration = math.nan
    return VideoInfo(duration, fps, stream.width, stream.height)


def probe(path: str | Path) -> VideoInfo:
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            return _info(container, _video_stream(container, path))
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoDecodeError(f"{path}: cannot open as video ({err})") from err


def read_clip(
    path: str | Path, choose_timestamps: Callable[[VideoInfo], Sequence[float]], threads: int = 0
) -> tuple[torch.Tensor, VideoInfo]:
    """Open ``path`` once, let ``choose_timestamps`` pick times from its info, decode them.

    ``threads`` are FFmpeg's decoder threads: 0 lets FFmpeg choose (about one per core), 1 decodes
    in the calling thread, which is faster when loader workers already fill the cores.

    Returns uint8 ``(T, 3, H, W)`` in the order the timestamps were given (they may repeat or
    overlap, as the clips of a multi-view test do). Each timestamp takes the last frame shown at
    or before it; timestamps past the end take the last frame.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path, threads)
            info = _info(container, stream)
            requested = [float(t) for t in choose_timestamps(info)]
            order = sorted(range(len(requested)), key=requested.__getitem__)
            decoded = _decode_span(container, stream, [requested[i] for i in order])
            frames = [None] * len(requested)
            for slot, frame in zip(order, decoded):
                frames[slot] = frame
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise VideoDecodeError(f"{path}: decoding failed ({err})") from err
    if not frames or any(f is None for f in frames):
        raise VideoDecodeError(f"{path}: no decodable frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), info


def read_frames_at(path: str | Path, timestamps_s: Sequence[float]) -> torch.Tensor:
    """Decode the frames shown at fixed ``timestamps_s`` as uint8 ``(T, 3, H, W)``."""
    return read_clip(path, lambda _info: timestamps_s)[0]


# Frames decoded only to reach the next wanted timestamp need not be complete: FFmpeg may skip
# non-reference frames (nothing else is predicted from them) shown this many frame durations or
# more before it. The frame shown at a wanted instant is within one frame duration of it.
_SKIP_MARGIN_FRAMES = 2


def _decode_span(container, stream, wanted: list[float]) -> list[np.ndarray | None]:
    """The frame shown at each of the sorted ``wanted`` times, decoding from the keyframe before
    the first; non-reference frames well before the next wanted time are not decoded at all, and
    a wanted time more than two keyframe intervals ahead is reached by seeking (files made for
    random access, with a keyframe every few frames, then cost little between far-apart clips)."""
    time_base = float(stream.time_base)
    rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    margin = _SKIP_MARGIN_FRAMES / rate if rate > 0 else math.inf  # unknown rate: skip nothing
    codec = stream.codec_context
    picked: list[np.ndarray | None] = [None] * len(wanted)
    next_slot = 0
    previous = None  # (frame, its rgb array once converted)
    # The widest gap between keyframes passed since the last seek bounds what a seek costs.
    last_keyframe, keyframe_gap = None, 0.0
    packets = _seek(container, stream, wanted[0])
    seeked_for = 0
    while True:
        packet = next(packets, None)
        if packet is None:
            break
        if packet.pts is not None:
            t_packet = packet.pts * time_base
            if packet.is_keyframe and (last_keyframe is None or t_packet > last_keyframe):
                if last_keyframe is not None:
                    keyframe_gap = max(keyframe_gap, t_packet - last_keyframe)
                last_keyframe = t_packet
            if seeked_for < next_slot and keyframe_gap > 0 and wanted[next_slot] - t_packet > 2 * keyframe_gap:
                seeked_for, previous, last_keyframe, keyframe_gap = next_slot, None, None, 0.0
                packets = _seek(container, stream, wanted[next_slot])
                continue
            codec.skip_frame = "NONREF" if t_packet < wanted[next_slot] - margin else "DEFAULT"
        for frame in packet.decode():
            if frame.pts is None:
                continue
            t = frame.pts * time_base
            # Every wanted timestamp before this frame is shown by the previous frame.
            while next_slot < len(wanted) and wanted[next_slot] < t:
                source = previous if previous is not None else [frame, None]
                if source[1] is None:
                    source[1] = source[0].to_ndarray(format="rgb24")
                picked[next_slot] = source[1]
                next_slot += 1
            if next_slot == len(wanted):
                return picked
            previous = [frame, None]
    if previous is not None:
        array = previous[1] if previous[1] is not None else previous[0].to_ndarray(format="rgb24")
        for slot in range(next_slot, len(wanted)):
            picked[slot] = array
    return picked


def _seek(container, stream, time_s: float):
    """Packets from the keyframe at or before ``time_s`` on (the decoder is flushed)."""
    container.seek(int(max(time_s, 0.0) / float(stream.time_base)), stream=stream, backward=True, any_frame=False)
    return iter(container.demux(stream))


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int, qp: int = 20) -> None:
    """Encode ``(H, W, 3)`` uint8 frames to H.264 (yuv420p, even sizes) with PyAV, deterministically."""
    path = Path(path)
    iterator = iter(frames)
    first = next(iterator)
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {width}x{height}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Constant quantizer: x264's rate-control lookahead (mbtree) makes crf output vary run to run.
        stream.options = {"qp": str(qp), "preset": "veryfast", "g": str(fps)}
        for array in (first, *iterator):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
