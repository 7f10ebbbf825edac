"""Broken, missing and odd files never stop a run: each is skipped and named once."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.frame import PictureType

from vidaccel_train.data.clips import BadFileLog, ClipDataset
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.errors import VideoDecodeError
from vidaccel_train.train import run

from support import TINY_FIT, compose_config
from support.video_corpus import sampling


def _write_audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


@pytest.fixture
def broken_dataset(tiny_dataset, tmp_path):
    """The tiny dataset plus one file of each broken kind in the train split and one in val."""
    root = tmp_path / "broken"
    shutil.copytree(tiny_dataset, root)
    good = next((root / "train" / "move_left").glob("*.mp4"))
    planted = {
        root / "train" / "move_left" / "zero_bytes.mp4": lambda p: p.write_bytes(b""),
        root / "train" / "move_right" / "truncated.mp4": lambda p: p.write_bytes(good.read_bytes()[:900]),
        root / "train" / "move_up" / "not_a_video.mp4": lambda p: p.write_text("hello"),
        root / "train" / "move_down" / "audio_only.mp4": _write_audio_only,
        root / "val" / "move_up" / "garbage.webm": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        # A well-formed mp4 whose video codec FFmpeg has no decoder for (its sample entry renamed).
        root / "val" / "move_down" / "unknown_codec.mp4": lambda p: p.write_bytes(
            good.read_bytes().replace(b"avc1", b"zzzz")
        ),
    }
    for path, make in planted.items():
        make(path)
    return root, sorted(str(p) for p in planted)


def _dataset(samples, log_path, train=False):
    transform = build_transform(False, 32, 36)
    return ClipDataset(samples, sampling(4, 3, 30), train=train, transform=transform, bad_files=BadFileLog(log_path))


def test_a_fit_on_broken_files_goes_on_and_names_each_once(broken_dataset, tmp_path, data_dir):
    root, planted = broken_dataset
    run_dir = tmp_path / "run"
    overrides = [
        "data=kinetics",
        f"data.root={root}",
        "data.num_classes=4",
        "trainer.max_epochs=2",
        "data.num_workers=2",
        *(o for o in TINY_FIT if not o.startswith(("data.synthetic", "data.num_workers"))),
    ]
    metrics = run(compose_config(run_dir, data_dir, overrides))
    assert "test/top1" in metrics
    report = (run_dir / "bad_files.txt").read_text().splitlines()
    named = sorted(line.split("\t")[0] for line in report)
    assert named == planted  # every broken file, once, although read in several epochs and workers
    reasons = dict(line.split("\t") for line in report)
    assert "no video stream" in reasons[next(p for p in planted if "audio_only" in p)]
    assert "no decoder" in reasons[next(p for p in planted if "unknown_codec" in p)]


def test_a_missing_training_file_is_skipped_with_a_reason_and_the_next_stands_in(tiny_dataset, tmp_path):
    real = next((tiny_dataset / "test" / "move_up").glob("*.mp4"))
    dataset = _dataset([(str(tmp_path / "gone.mp4"), 0), (str(real), 2)], tmp_path / "bad.txt", train=True)
    item = dataset[0]
    assert item["label"] == 2 and item["video"].shape == (3, 4, 32, 32) and item["valid"]
    assert "gone.mp4" in (tmp_path / "bad.txt").read_text()


def test_an_unreadable_evaluation_file_is_left_out_not_replaced(tiny_dataset, tmp_path):
    """A bad test file must not count a neighbour twice: its item is marked, the metrics skip it."""
    real = next((tiny_dataset / "test" / "move_up").glob("*.mp4"))
    dataset = _dataset([(str(tmp_path / "gone.mp4"), 0), (str(real), 2)], tmp_path / "bad.txt")
    missing, present = dataset[0], dataset[1]
    assert not missing["valid"] and missing["video"].shape == present["video"].shape == (3, 4, 32, 32)
    assert present["valid"] and present["label"] == 2
    assert "gone.mp4" in (tmp_path / "bad.txt").read_text()


def test_a_wholly_broken_split_is_a_clear_error(tmp_path):
    samples = []
    for index in range(3):
        path = tmp_path / f"broken_{index}.mp4"
        path.write_bytes(b"\x00" * 100)
        samples.append((str(path), 0))
    with pytest.raises(VideoDecodeError, match="3 videos in a row could not be decoded"):
        _dataset(samples, tmp_path / "bad.txt", train=True)[0]


def test_a_video_shorter_than_the_clip_repeats_its_last_frame(tiny_dataset, tmp_path):
    from vidaccel_train.data.video_io import write_video

    short = tmp_path / "short.mp4"
    write_video(short, [np.full((36, 36, 3), 40 * i, dtype=np.uint8) for i in range(3)], fps=30)
    dataset = _dataset([(str(short), 1)], tmp_path / "bad.txt")
    clip = dataset[0]["video"]  # 4 frames 0.1 s apart from a 0.1 s video
    assert clip.shape == (3, 4, 32, 32) and torch.equal(clip[:, 2], clip[:, 3])
    assert not (tmp_path / "bad.txt").exists()


def _transcode(source, target, codec, rate, audio: bool):
    """``source`` re-encoded as ``codec`` at ``rate`` fps in ``target``'s container, with a silent
    audio track when asked (as clips cut from YouTube carry)."""
    frames = [f.to_ndarray(format="rgb24") for f in av.open(str(source)).decode(video=0)]
    with av.open(str(target), "w") as container:
        video = container.add_stream(codec, rate=rate)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("libopus" if target.suffix == ".webm" else "aac", rate=48000) if audio else None
        for array in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 48000
            container.mux([*sound.encode(frame), *sound.encode()])


@pytest.mark.parametrize(
    "name,codec,rate,audio",
    [
        ("clip.webm", "libvpx-vp9", 25, True),
        ("clip.mkv", "libx264", 24, True),
        ("clip.avi", "mpeg4", 30, False),
        ("clip.mp4", "libx264", 60, True),
    ],
)
def test_common_containers_codecs_and_frame_rates_decode_to_clips(tiny_dataset, tmp_path, name, codec, rate, audio):
    source = next((tiny_dataset / "test" / "move_up").glob("*.mp4"))
    _transcode(source, tmp_path / name, codec, rate, audio)
    item = _dataset([(str(tmp_path / name), 2)], tmp_path / "bad.txt")[0]
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].std() > 0.2
    assert not (tmp_path / "bad.txt").exists()


def test_the_check_script_writes_a_clean_index_that_trains(broken_dataset, tmp_path, data_dir):
    root, planted = broken_dataset
    index = tmp_path / "index"
    result = subprocess.run(
        [sys.executable, "scripts/check_dataset.py", str(root), "--out", str(index), "--workers", "2"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    named = sorted(line.split("\t")[0] for line in (index / "bad_files.txt").read_text().splitlines())
    assert named == planted
    summary = json.loads((index / "summary.json").read_text())
    train = summary["splits"]["train"]
    assert {key: train[key] for key in ("readable", "bad", "missing", "not_video")} == {
        "readable": 12,
        "bad": 4,
        "missing": 0,
        "not_video": 0,
    }
    assert train["codecs"] == {"h264": 12} and train["rotated"] == train["start_offset"] == train["anamorphic"] == 0
    assert (index / "labels.txt").read_text() == (root / "labels.txt").read_text()

    run_dir = tmp_path / "run"
    overrides = [
        "data=kinetics",
        f"data.root={index}",
        "data.layout=list_file",
        "data.num_classes=4",
        "+trainer.fast_dev_run=true",
        *(o for o in TINY_FIT if not o.startswith("data.synthetic")),
    ]
    run(compose_config(run_dir, data_dir, overrides))
    assert not (run_dir / "bad_files.txt").exists()  # the clean index holds no bad file


def test_the_check_script_explains_an_unknown_layout(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/check_dataset.py", str(tmp_path), "--out", str(tmp_path / "out")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "cannot tell the layout" in result.stderr and "Traceback" not in result.stderr


def _frames_and_pictures(path):
    """Each frame's time (s) and picture type, in display order, and the keyframe packets' indices."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [
            (round(float(f.pts * f.time_base), 4), PictureType(f.pict_type).name) for f in container.decode(stream)
        ]
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        keyframes = [i for i, p in enumerate(sorted(packets, key=lambda p: p.pts)) if p.is_keyframe]
    return frames, keyframes


def test_the_prepare_script_writes_a_random_access_copy_that_trains(broken_dataset, tmp_path, data_dir):
    root, planted = broken_dataset
    copy = tmp_path / "copy"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/prepare_dataset.py",
            str(root),
            str(copy),
            "--workers",
            "2",
            "--keyframe-interval",
            "8",
            "--model",
            "x3d_tiny",
            "--psnr-short-side",
            "32",
            "--measure-videos",
            "4",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    named = sorted(line.split("\t")[0] for line in (copy / "bad_files.txt").read_text().splitlines())
    assert named == planted
    report = json.loads((copy / "prepare_report.json").read_text())
    assert report["splits"]["train"]["videos"] == 12 and report["splits"]["train"]["bad"] == 4
    assert report["random_clips"]["videos"] == 4 and report["random_clips"]["psnr_db_mean"] > 35
    assert (copy / "labels.txt").read_text() == (root / "labels.txt").read_text()

    # Every frame at its original time, a keyframe every 8 frames, no B-frames, same labels.
    first_line = (copy / "train.txt").read_text().splitlines()[0]
    name, label = first_line.rsplit(" ", 1)
    original = next(p for p in (root / "train").rglob(Path(name).name))
    copied_frames, keyframes = _frames_and_pictures(copy / name)
    original_frames, _ = _frames_and_pictures(original)
    assert [t for t, _ in copied_frames] == [t for t, _ in original_frames]
    assert {kind for _, kind in copied_frames} <= {"I", "P"}
    assert keyframes == list(range(0, len(copied_frames), 8))
    class_names = (root / "labels.txt").read_text().split()
    assert class_names[int(label)] == original.parent.name

    run_dir = tmp_path / "run"
    overrides = [
        "data=kinetics",
        f"data.root={copy}",
        "data.layout=list_file",
        "data.num_classes=4",
        "+trainer.fast_dev_run=true",
        *(o for o in TINY_FIT if not o.startswith("data.synthetic")),
    ]
    run(compose_config(run_dir, data_dir, overrides))
    assert not (run_dir / "bad_files.txt").exists()


CLI_MISTAKES = [
    ("train", ["-m", "vidaccel_train", "data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
    (
        "train_component",
        ["-m", "vidaccel_train", "quant=ptq", "quant.calibration_batches=0"],
        "quant.calibration_batches must be a positive integer, got 0",
    ),
    (
        "train_lightning_name",
        ["-m", "vidaccel_train", "model.checkpoint={tmp}/epoch=3-step=100.ckpt"],
        "quote the value: 'model.checkpoint=\"{tmp}/epoch=3-step=100.ckpt\"'",
    ),
    (
        "export",
        ["-m", "vidaccel_train.export", "ckpt_path={tmp}/missing.ckpt"],
        "checkpoint {tmp}/missing.ckpt does not exist",
    ),
    (
        "predict",
        ["-m", "vidaccel_train.predict", "{tmp}/missing.pte", "{tmp}/video.mp4"],
        "{tmp}/missing.pte does not exist",
    ),
    (
        "verify_target",
        ["-m", "vidaccel_train.export.verify_target", "{tmp}/export", "--cpus", "cortex-a53"],
        "{tmp}/export: no manifest.json in this folder",
    ),
    (
        "train_target",
        ["-m", "vidaccel_train", "callbacks.export.targets=[riscv64]"],
        "callbacks.export.targets must name some of ['aarch64', 'x86_64'], got ['riscv64']",
    ),
    (
        "check_dataset",
        ["scripts/check_dataset.py", "{tmp}/kinetics", "--out", "{tmp}/out"],
        "{tmp}/kinetics: no such folder",
    ),
    (
        "prepare_dataset",
        ["scripts/prepare_dataset.py", "{tmp}/kinetics", "{tmp}/out"],
        "{tmp}/kinetics: no such folder",
    ),
]


@pytest.mark.parametrize("name, args, message", CLI_MISTAKES, ids=[m[0] for m in CLI_MISTAKES])
def test_every_command_line_says_a_mistake_in_one_error_line_and_exits_2(tmp_path, name, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[1] == "vidaccel_train":
        args += [f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"]
    result = subprocess.run(
        [sys.executable, *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    errors = [line for line in result.stderr.splitlines() if line.strip() and line != "Seed set to 42"]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in errors[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # nothing generated or written
