"""Issue #43, round two: video files as users have them, each checked for the frame a player
shows at each time (tests/support/video_corpus.py paints its index into every frame), and for
the same verdict on a file (readable, or why not) in every path and at every decoder thread
count: cover art before the video, an old x264's 4:4:4, MPEG-TS starting mid-GOP, an open GOP
whose leading frames cannot be decoded, AVI with B-frames, MPEG program streams, downloads cut
short, and browser WebMs' frame rates."""

from __future__ import annotations

import csv
import math
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidaccel_train.data.check import check_dataset, check_video
from vidaccel_train.data.clips import ClipDataset
from vidaccel_train.data.video_io import iter_frames, probe, read_clip, read_frames_at
from vidaccel_train.errors import VideoDecodeError
from vidaccel_train.predict import Predictor

from support.video_corpus import (
    CONDITIONS,
    HEIGHT,
    WIDTH,
    Case,
    read_index,
    read_indices,
    sampling,
    truncate,
    write_audio_with_cover,
    write_case,
)

ROUND_TWO = [
    "cover_art.mp4",
    "old_x264_444.mp4",
    "mid_gop.ts",
    "open_gop.ts",
    "bframes.avi",
    "program.mpg",
    "interlaced.vob",
    "firefox.webm",
    "chrome.webm",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("round_two")
    return {name: CONDITIONS[name](folder) for name in ROUND_TWO}


def _frame_times(case: Case) -> list[float]:
    """Every frame's middle, and a point just after each frame starts."""
    ends = [*case.times[1:], case.end_s]
    return [t for a, b in zip(case.times, ends) for t in (a + 1e-3, (a + b) / 2)]


# ---------------------------------------------------------------------------- every path, every time


@pytest.mark.parametrize("name", ROUND_TWO)
def test_single_frame_reads_are_the_frames_shown_then(corpus, name):
    """One read per time, as a training clip's first frame or a multi-view test's far-apart
    clips are reached: by a seek (or, in a program stream, by reading up to it)."""
    case = corpus[name]
    times = _frame_times(case)[::3]
    got = [read_indices(read_frames_at(case.path, [t]))[0] for t in times]
    assert got == [case.expected(t) for t in times]


@pytest.mark.parametrize("name", ROUND_TWO)
@pytest.mark.parametrize("threads", [1, 0, 3])
def test_one_read_of_every_frame_is_the_same_at_every_thread_count(corpus, name, threads):
    case = corpus[name]
    times = _frame_times(case)
    frames, info = read_clip(case.path, lambda info: times, threads=threads)
    assert read_indices(frames) == [case.expected(t) for t in times]
    # (a browser recording's last frame has no duration: it lasts an average frame)
    assert info.duration_s == pytest.approx(case.end_s, abs=0.01 if name.endswith(".webm") else 1e-3)


@pytest.mark.parametrize("name", ROUND_TWO)
def test_every_frame_of_the_training_copy_is_a_frame_shown_at_its_time(corpus, name):
    """``iter_frames`` (the training copy's source): the frames a player shows, in order, timed from the first."""
    case = corpus[name]
    got = [(seconds, read_index(frame.to_ndarray(format="rgb24"))) for seconds, frame, _ in iter_frames(case.path)]
    assert [index for _, index in got] == case.shown
    np.testing.assert_allclose([seconds for seconds, _ in got], case.times, atol=1e-3)


# ------------------------------------------------------------------------------------ 1. cover art


def test_cover_art_before_the_video_is_not_taken_for_the_video(corpus):
    case = corpus["cover_art.mp4"]
    with av.open(str(case.path)) as container:  # as mutagen / yt-dlp --embed-thumbnail leave it
        assert container.streams[0].disposition & av.stream.Disposition.attached_pic
    info = probe(case.path)
    assert (info.codec, info.width, info.height, info.fps) == ("h264", WIDTH, HEIGHT, 10.0)
    assert info.duration_s == pytest.approx(case.end_s, abs=1e-3)
    assert check_video(str(case.path))[0] is None


def test_an_audio_file_with_cover_art_has_no_video_stream(tmp_path):
    path = tmp_path / "song.m4a.mp4"
    write_audio_with_cover(path)
    with av.open(str(path)) as container:
        assert container.streams[0].disposition & av.stream.Disposition.attached_pic
        assert container.streams.audio
    for read in (probe, lambda p: read_frames_at(p, [0.5]), lambda p: list(iter_frames(p))):
        with pytest.raises(
            VideoDecodeError, match=r"song\.m4a\.mp4: no video stream \(audio-only or not a video file\)"
        ):
            read(path)
    assert check_video(str(path))[0] == "no video stream (audio-only or not a video file)"


def test_a_class_of_cover_art_videos_keeps_its_clips_in_a_training_tree(corpus, tmp_path):
    root = tmp_path / "root"
    for split in ("train", "val"):
        for label, name in (("music", "cover_art.mp4"), ("plain", "bframes.avi")):
            folder = root / split / label
            folder.mkdir(parents=True)
            shutil.copy(corpus[name].path, folder / name)
    summary = check_dataset(root, tmp_path / "index", splits=("train", "val"), workers=1)
    assert (summary["splits"]["train"]["readable"], summary["splits"]["train"]["bad"]) == (2, 0)


# ---------------------------------------------------------------------------- 2. an old x264's 4:4:4


def _decode_from_start(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]


def test_an_old_x264_444_file_reads_after_a_seek_as_decoded_from_the_start(corpus):
    """x264 states its version in the first packet's SEI; FFmpeg decodes the 4:4:4 of versions
    before 151 with a workaround. A decoder that starts after a seek never sees that SEI: its
    frames are not the ones a player, which decoded from the start, shows."""
    case = corpus["old_x264_444.mp4"]
    reference = _decode_from_start(case.path)
    start = reference[0][0]
    with av.open(str(case.path)) as container:  # the file reproduces the condition
        stream = container.streams.video[0]
        container.seek(int(1.55 / stream.time_base), stream=stream)
        plain = {float(f.pts * stream.time_base): f.to_ndarray(format="rgb24") for f in container.decode(stream)}
    shown = dict(reference)
    assert any(not np.array_equal(array, shown[t]) for t, array in plain.items())
    for threads in (1, 0):
        for t in case.times[::2]:
            frames, _ = read_clip(case.path, lambda info, t=t: [t + 0.05], threads=threads)
            expected = next(array for s, array in reversed(reference) if s - start <= t + 0.05)
            assert torch.equal(frames[0].permute(1, 2, 0), torch.from_numpy(expected)), (threads, t)
    assert check_video(str(case.path))[0] is None


# --------------------------------------------------------------------------- 3. MPEG-TS from mid-GOP


def test_a_ts_that_starts_mid_gop_starts_at_its_first_shown_frame(corpus, tmp_path):
    case = corpus["mid_gop.ts"]
    assert case.notes["first_packet_s"] < -0.1  # packets before the first frame shown
    with av.open(str(case.path)) as container:
        stream = container.streams.video[0]
        header_start = float(stream.start_time * stream.time_base)
    info = probe(case.path)
    assert info.start_s == pytest.approx(header_start - case.notes["first_packet_s"], abs=1e-3)
    assert info.duration_s == pytest.approx(case.end_s, abs=1e-3)
    # Four frames 0.1 s apart from the start are four different frames, not the first one four times.
    assert read_indices(read_frames_at(case.path, [0.01, 0.11, 0.21, 0.31])) == case.shown[:4]
    root = tmp_path / "root" / "train" / "news"
    root.mkdir(parents=True)
    shutil.copy(case.path, root / "capture.ts")
    check_dataset(tmp_path / "root", tmp_path / "index", splits=("train",), workers=1)
    with open(tmp_path / "index" / "report.csv", newline="") as stream:
        row = next(csv.DictReader(stream))
    assert float(row["start_s"]) == pytest.approx(info.start_s, abs=1e-3)
    assert float(row["duration_s"]) == pytest.approx(case.end_s, abs=1e-3)


# ------------------------------------------------------------------- 4. leading frames of an open GOP


def _showing_corrupt_frames(monkeypatch):
    """Decoders that output the frames they could not decode (flagged corrupt), as FFmpeg's h264
    decoder does at some thread counts on broadcast captures."""
    from vidaccel_train.data import video_io

    choose = video_io._video_stream

    def _video_stream(container, path, threads=0):
        stream = choose(container, path, threads)
        context = stream.codec_context
        context.flags = context.flags | av.codec.context.Flags.output_corrupt
        return stream

    monkeypatch.setattr(video_io, "_video_stream", _video_stream)


@pytest.mark.parametrize("name", ["open_gop.ts", "mid_gop.ts"])
def test_undecodable_leading_frames_are_never_shown_even_when_the_decoder_outputs_them(corpus, name, monkeypatch):
    case = corpus[name]
    times = _frame_times(case)
    plain = read_clip(case.path, lambda info: times, threads=1)
    plain_info = probe(case.path)
    copy = [(seconds, read_index(frame.to_ndarray(format="rgb24"))) for seconds, frame, _ in iter_frames(case.path)]
    _showing_corrupt_frames(monkeypatch)
    for threads in (1, 0):
        frames, info = read_clip(case.path, lambda info: times, threads=threads)
        assert read_indices(frames) == [case.expected(t) for t in times]
        assert info == plain[1] and torch.equal(frames, plain[0])
    assert [
        (s, i) for s, frame, _ in iter_frames(case.path) for i in [read_index(frame.to_ndarray(format="rgb24"))]
    ] == copy
    assert probe(case.path) == plain_info
    assert copy[0] == (0.0, case.shown[0])


# ---------------------------------------------------------------------------------- 5. AVI, 6. MPEG-PS


@pytest.mark.parametrize("name", ["program.mpg", "interlaced.vob"])
def test_a_program_stream_measures_its_duration(corpus, name):
    info = probe(corpus[name].path)
    assert info.duration_source == "last packet"
    assert info.duration_s == pytest.approx(5.0, abs=1e-3)
    assert info.fps == pytest.approx(25.0)


def test_program_stream_clips_far_apart_in_one_read_are_each_read_alone(corpus):
    case = corpus["program.mpg"]
    clips = [[4.41, 4.61, 4.81], [0.05, 0.25, 0.45], [2.33, 2.53, 2.73]]
    frames, _ = read_clip(case.path, lambda info: [t for clip in clips for t in clip])
    assert read_indices(frames) == [case.expected(t) for clip in clips for t in clip]


# ---------------------------------------------------------------------------- 7. downloads cut short


@pytest.fixture(scope="module")
def cut_short(tmp_path_factory) -> Case:
    folder = tmp_path_factory.mktemp("cut_short")
    case = write_case(folder / "download.mp4", count=50, container_options={"movflags": "+faststart"})
    return truncate(case)


def _timeline_predictor() -> Predictor:
    """``predict --timeline``'s reading without an exported program: uniform scores (what matters
    here is which windows it reads)."""
    predictor = Predictor.__new__(Predictor)
    predictor.classes = ["a", "b"]
    predictor.clip = sampling(4, 3, 30)
    predictor.display_aspect = "square"
    predictor.transform = lambda video: video
    predictor.logits = lambda views: torch.zeros(views.shape[0], 2)
    return predictor


def test_a_download_cut_short_is_refused_by_every_path_at_every_thread_count(cut_short):
    """The index lists frames the data no longer holds. Training and predict failed on it,
    but only when a clip reached the cut (and then only with one decoder thread); the timeline
    labelled windows past the cut with the last frame frozen; the dataset check called it fine."""
    path = cut_short.path
    assert 1.0 < cut_short.notes["cut_s"] < 4.0
    reason = r"download\.mp4: truncated: the index lists frames to 5\.00 s, the data ends before \d\.\d\d s"
    with pytest.raises(VideoDecodeError, match=reason):
        probe(path)
    for threads in (1, 0, 3):
        for times in ([0.2], [4.5], [0.2, 4.5]):
            with pytest.raises(VideoDecodeError, match=reason):
                read_clip(path, lambda info, times=times: times, threads=threads)
    with pytest.raises(VideoDecodeError, match=reason):
        list(iter_frames(path))
    with pytest.raises(VideoDecodeError, match=reason):
        _timeline_predictor().timeline(path, 0.5)
    assert check_video(str(path))[0].startswith("truncated: the index lists frames to 5.00 s")
    spec = sampling(4, 3, 30)
    for train in (True, False):
        dataset = ClipDataset([(str(path), 0)], spec, train=train, transform=lambda v: v, clips_per_video=2)
        with pytest.raises(VideoDecodeError):
            dataset.read(0)


def test_a_whole_download_is_read_to_its_end(tmp_path):
    case = write_case(tmp_path / "whole.mp4", count=50, container_options={"movflags": "+faststart"})
    assert check_video(str(case.path))[0] is None
    assert read_indices(read_frames_at(case.path, [4.95])) == [49]
    timeline = _timeline_predictor().timeline(case.path, 0.5)
    assert timeline.starts[-1] + timeline.span_s <= case.end_s + 1e-6


def test_a_mkv_cut_short_ends_where_its_data_does(tmp_path):
    """Without an index the file is what it holds: the duration is the last packet's end."""
    case = write_case(tmp_path / "cut.mkv", count=50)
    data = case.path.read_bytes()
    case.path.write_bytes(data[: len(data) * 6 // 10])
    info = probe(case.path)
    assert info.duration_source == "last packet" and 1.0 < info.duration_s < 4.0
    last = read_indices(read_frames_at(case.path, [info.duration_s - 0.01]))[0]
    assert last is not None and abs(last / 10 + 0.1 - info.duration_s) < 0.15
    assert check_video(str(case.path))[0] is None


# ------------------------------------------------------------------------------ 8. the check's report


def test_browser_webms_report_the_frame_rate_of_their_frames(corpus):
    firefox, chrome = probe(corpus["firefox.webm"].path), probe(corpus["chrome.webm"].path)
    with av.open(str(corpus["firefox.webm"].path)) as container:  # what the headers say
        stream = container.streams.video[0]
        assert (stream.time_base, stream.average_rate, stream.guessed_rate) == (Fraction(1, 1000), None, 1000)
    with av.open(str(corpus["chrome.webm"].path)) as container:
        assert container.streams.video[0].average_rate == Fraction(50, 3)
    real = {name: (len(corpus[name].times) - 1) / corpus[name].times[-1] for name in ("firefox.webm", "chrome.webm")}
    assert firefox.fps == pytest.approx(real["firefox.webm"], rel=0.05)
    assert chrome.fps == pytest.approx(real["chrome.webm"], rel=0.05)
    assert 20 < firefox.fps < 30 and 18 < chrome.fps < 26


def test_the_check_reports_measured_rates_and_codec_names(corpus, tmp_path):
    root = tmp_path / "root"
    av1 = write_case(
        tmp_path / "av1.webm",
        count=30,
        fps=30,
        codec="libsvtav1",
        options={"preset": "10", "svtav1-params": "log-level=0"},
    )
    files = {
        "firefox.webm": corpus["firefox.webm"].path,
        "chrome.webm": corpus["chrome.webm"].path,
        "av1.webm": av1.path,
        "plain.avi": corpus["bframes.avi"].path,
    }
    for name, path in files.items():
        folder = root / "train" / name.split(".")[0]
        folder.mkdir(parents=True)
        shutil.copy(path, folder / name)
    summary = check_dataset(root, tmp_path / "index", splits=("train",), workers=1)
    assert summary["splits"]["train"]["codecs"] == {"vp8": 1, "vp9": 1, "av1": 1, "h264": 1}
    with open(tmp_path / "index" / "report.csv", newline="") as stream:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(stream)}
    assert 20 < float(rows["firefox.webm"]["fps"]) < 30
    assert 18 < float(rows["chrome.webm"]["fps"]) < 26
    assert float(rows["av1.webm"]["fps"]) == pytest.approx(30.0, rel=1e-3)
    assert float(rows["plain.avi"]["fps"]) == pytest.approx(10.0)
    assert all(math.isfinite(float(row["duration_s"])) for row in rows.values())
