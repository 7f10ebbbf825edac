"""The files people actually have: phone recordings (display matrix), cuts and segments (first
timestamp not 0, edit lists), browser recordings (no duration in the header), AV1/VP9/HEVC/MJPEG,
variable frame rate, anamorphic pixels, one-frame files. Every frame carries its index in its
pixels (tests/support/video_corpus.py): each path must return, for every time it samples, the frame a
player shows then, upright, against a reference computed from the presentation timestamps."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from vidaccel_train.data.check import check_dataset
from vidaccel_train.data.clips import ClipDataset
from vidaccel_train.data.video_io import EncodeSettings, VideoInfo, probe, read_clip, transcode
from vidaccel_train.predict import Views, views_dataset

from support.video_corpus import CONDITIONS, HEIGHT, WIDTH, Case, read_indices, sampling

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("corpus")
    return {name: make(folder) for name, make in CONDITIONS.items()}


def _aspect(name: str) -> str:
    return "square" if name.startswith("anamorphic") else "stored"


def _true_info(case: Case) -> VideoInfo:
    """The info a correct reader reports, from how the file was written (not from the reader)."""
    return VideoInfo(duration_s=case.end_s, fps=30.0, width=WIDTH, height=HEIGHT)


# X3D-XS's clip (4 frames, 12 apart at 30 fps), X3D-S's (13 x 6) and a short one that fits 1-frame files.
SPECS = [sampling(4, 12, 30), sampling(13, 6, 30), sampling(2, 1, 30)]


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_the_reader_returns_the_frame_a_player_shows_at_each_time(corpus, name):
    """Multi-view sampling from the reader's own info (so the duration must be right too), plus
    times before, between and past the frames: every frame is the reference's, upright."""
    case = corpus[name]
    spec = SPECS[0] if case.end_s > SPECS[0].span_s else SPECS[2]
    seen = {}

    def views(info):
        seen["info"] = info
        starts = spec.uniform_starts(info, 10)
        return [t for start in starts for t in spec.timestamps(start)] + [0.0, case.end_s / 3 + 0.013, case.end_s + 5.0]

    frames, info = read_clip(case.path, views, threads=1, display_aspect=_aspect(name))
    wanted = [t for start in spec.uniform_starts(_true_info(case), 10) for t in spec.timestamps(start)]
    wanted += [0.0, case.end_s / 3 + 0.013, case.end_s + 5.0]
    assert read_indices(frames) == [case.expected(t) for t in wanted]
    frame_s = max(b - a for a, b in zip([0.0, *case.times], [*case.times, case.end_s]))
    assert seen["info"].duration_s == pytest.approx(case.end_s, abs=frame_s + 1e-3)
    assert (info.width, info.height) == (WIDTH, HEIGHT)


@pytest.mark.parametrize("name", ["av1.mp4", "av1.webm", "hevc.mp4", "vp9_altref.webm"])
@pytest.mark.parametrize("spec", SPECS[:2], ids=["x3d_xs", "x3d_s"])
def test_codecs_with_reordered_frames_are_exact_under_the_test_protocol(corpus, name, spec):
    """10 views of X3D-XS and X3D-S clips in one read: AV1 returned some frames one early while
    non-reference frames were skipped; every codec must give the reference's frames."""
    case = corpus[name]
    starts = spec.uniform_starts(_true_info(case), 10)
    wanted = [t for start in starts for t in spec.timestamps(start)]
    frames, _ = read_clip(case.path, lambda info: wanted, threads=1)
    assert read_indices(frames) == [case.expected(t) for t in wanted]


@pytest.mark.parametrize(
    "name,rotation,mirrored,start,source",
    [
        ("plain.mp4", 0, False, 0.0, "stream"),
        ("rotated_cw90.mp4", 90, False, 0.0, "stream"),
        ("rotated_cw270.mov", 270, False, 0.0, "stream"),
        ("rotated_180.mp4", 180, False, 0.0, "stream"),
        ("mirrored.mp4", 0, True, 0.0, "stream"),
        ("rotated_cw90_mirrored.mp4", 90, True, 0.0, "stream"),
        ("offset_10s.mp4", 0, False, 10.0, "stream"),
        ("offset_10s.mkv", 0, False, 10.0, "last packet"),
        ("browser_vp9.webm", 0, False, 0.0, "last packet"),
    ],
)
def test_probe_reports_orientation_start_and_where_the_duration_came_from(
    corpus, name, rotation, mirrored, start, source
):
    info = probe(corpus[name].path)
    assert (info.rotation, info.orientation.mirrored, info.duration_source) == (rotation, mirrored, source)
    assert info.start_s == pytest.approx(start, abs=1e-3)
    assert info.duration_s == pytest.approx(corpus[name].end_s, abs=1e-3)
    assert (info.width, info.height) == (WIDTH, HEIGHT)


def test_anamorphic_video_is_resampled_to_square_pixels_or_kept_as_stored(corpus):
    case = corpus["anamorphic.mp4"]
    square = read_clip(case.path, lambda info: [1.05], display_aspect="square")[0]
    stored = read_clip(case.path, lambda info: [1.05], display_aspect="stored")[0]
    assert square.shape[-2:] == (HEIGHT, WIDTH) and read_indices(square) == [case.expected(1.05)]
    assert stored.shape[-2:] == (HEIGHT, 48)  # 4:3 pixels stored 48 wide
    info = probe(case.path, display_aspect="square")
    assert (
        info.anamorphic and info.sample_aspect == pytest.approx(4 / 3) and (info.coded_width, info.width) == (48, WIDTH)
    )


class _Frames:
    """An identity 'transform': the clip's frames as the dataset decoded them, ``(T, 3, H, W)``."""

    def __call__(self, video):
        return video.as_subclass(torch.Tensor)


EVAL_CASES = [
    "rotated_cw90.mp4",
    "offset_10s.mp4",
    "offset_1.4s.mkv",
    "edit_list.mp4",
    "segment.ts",
    "browser_vp9.webm",
    "av1.mp4",
    "anamorphic.mp4",
]


@pytest.mark.parametrize("name", EVAL_CASES)
def test_the_test_loader_samples_every_view_at_the_right_frames(corpus, name):
    """What ``test`` and the export's verification read: 10 clips spread over the whole video."""
    case = corpus[name]
    spec = sampling(4, 3, 30)
    dataset = ClipDataset(
        [(str(case.path), 0)], spec, train=False, transform=_Frames(), clips_per_video=10, display_aspect="square"
    )
    item = dataset[0]
    assert item["valid"]
    got = read_indices(item["video"].reshape(-1, 3, HEIGHT, WIDTH))
    starts = spec.uniform_starts(_true_info(case), 10)
    assert got == [case.expected(t) for start in starts for t in spec.timestamps(start)]


@pytest.mark.parametrize("name", ["browser_vp8.webm", "offset_10s.mkv", "rotated_180.mp4", "segment.ts"])
def test_training_clips_start_anywhere_in_the_video_and_hold_the_right_frames(corpus, name):
    """Random training clips: each holds the reference's frames for its start, and starts cover
    the whole video (a missing duration once made every clip start at 0)."""
    case = corpus[name]
    spec = sampling(4, 3, 30)
    dataset = ClipDataset([(str(case.path), 0)], spec, train=True, transform=_Frames())
    firsts = []
    for seed in range(12):
        item = dataset[(0, seed, 0)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            start = spec.random_start(_true_info(case))
        assert read_indices(item["video"]) == [case.expected(t) for t in spec.timestamps(start)]
        firsts.append(read_indices(item["video"])[0])
    slack_frames = (case.end_s - spec.span_s) * 10
    assert max(firsts) - min(firsts) > slack_frames / 2


@pytest.mark.parametrize("name", ["rotated_cw90.mp4", "offset_10s.mp4", "browser_vp9.webm", "anamorphic.mp4"])
def test_predict_reads_its_views_upright_at_the_right_times(corpus, name):
    """What predict decodes for a manifest: its clips spread over the video, upright, timed from the first frame."""
    case = corpus[name]
    spec = sampling(4, 3, 30)
    item = views_dataset(spec, "square", [(str(case.path), 0)], Views(5, 1), _Frames()).read(0)
    starts = spec.uniform_starts(_true_info(case), 5)
    got = read_indices(item["video"].reshape(-1, 3, HEIGHT, WIDTH))
    assert got == [case.expected(t) for start in starts for t in spec.timestamps(start)]


def test_the_dataset_check_reports_what_it_found_in_each_file(corpus, tmp_path):
    root = tmp_path / "root"
    names = ["plain.mp4", "rotated_cw90.mp4", "offset_10s.mkv", "browser_vp9.webm", "anamorphic.mp4", "av1.mp4"]
    for i, name in enumerate(names):
        for split in ("train", "val"):
            folder = root / split / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus[name].path, folder / name)
    summary = check_dataset(root, tmp_path / "index", splits=("train", "val"), workers=2)
    train = summary["splits"]["train"]
    assert (train["readable"], train["bad"]) == (6, 0)
    assert (train["rotated"], train["start_offset"], train["no_header_duration"], train["anamorphic"]) == (1, 1, 2, 1)
    assert train["codecs"] == {"h264": 4, "vp9": 1, "av1": 1}  # codecs, not decoders (libdav1d)
    with open(tmp_path / "index" / "report.csv", newline="") as stream:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(stream) if row["split"] == "train"}
    assert rows["rotated_cw90.mp4"]["rotation"] == "90"
    assert float(rows["offset_10s.mkv"]["start_s"]) == pytest.approx(10.0)
    assert rows["browser_vp9.webm"]["duration_source"] == "last packet"
    assert float(rows["browser_vp9.webm"]["duration_s"]) == pytest.approx(3.0, abs=0.01)
    assert float(rows["anamorphic.mp4"]["sample_aspect"]) == pytest.approx(4 / 3, abs=1e-3)
    assert all(row["status"] == "ok" for row in rows.values())


@pytest.mark.parametrize("name", ["rotated_cw90.mp4", "offset_10s.mkv", "browser_vp9.webm", "anamorphic.mp4"])
def test_the_training_copy_is_upright_timed_from_its_first_frame_and_keeps_the_aspect(corpus, tmp_path, name):
    case = corpus[name]
    copy = tmp_path / "copy.mp4"
    transcode(case.path, copy, EncodeSettings(short_side=48, keyframe_interval=4))
    info = probe(copy, display_aspect="square")
    assert (info.rotation, info.start_s, info.width, info.height) == (0, 0.0, WIDTH, HEIGHT)
    assert info.sample_aspect == pytest.approx(probe(case.path).sample_aspect, abs=1e-2)
    wanted = [0.0, 0.55, 1.25, 2.05, 2.95]
    frames = read_clip(copy, lambda _: wanted, display_aspect="square")[0]
    assert read_indices(frames) == [case.expected(t) for t in wanted]


def test_a_rotated_phone_video_is_predicted_as_its_upright_twin(smoke_run, tmp_path):
    """The model path: a move_up clip stored turned (as a phone records) with a display matrix
    is classified as the same clip stored upright."""
    import numpy as np

    from vidaccel_train.data.synthetic import SyntheticSpec, render_clip
    from vidaccel_train.data.video_io import write_video
    from vidaccel_train.predict import predict

    frames = render_clip(
        SyntheticSpec(height=48, width=64, duration_s=1.0, fps=15), "move_up", np.random.default_rng(3)
    )
    upright = tmp_path / "upright.mp4"
    write_video(upright, frames, fps=15, qp=0)
    import av

    turned = tmp_path / "turned.mp4"
    with av.open(str(turned), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 48, 64, "yuv420p"
        stream.options = {"qp": "0", "preset": "veryfast"}
        stream.set_display_rotation(-90)  # a player turns it 90 degrees clockwise
        for array in frames:
            stored = np.ascontiguousarray(np.rot90(array, k=1))  # stored turned counter-clockwise
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode())
    artifact = smoke_run / "export" / "model_int8.pte"
    assert json.loads((artifact.parent / "manifest.json").read_text())["display_aspect"] == "square"
    ours, twin = predict(artifact, upright, topk=4), predict(artifact, turned, topk=4)
    assert ours[0][0] == twin[0][0]
    scores = {label: score for label, score in ours}
    assert all(math.isclose(score, scores[label], abs_tol=0.05) for label, score in twin)
