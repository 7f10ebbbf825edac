"""Files and folders as users have them: linked folders, class names in either Unicode normal
form, outputs that cannot be written, timeline names that would collide, loader workers on a
small machine. Each on real files, runs and the smoke run's int8 program."""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from vidaccel_train.data.layouts import index_split, videos_under
from vidaccel_train.data.synthetic import SyntheticSpec, render_clip
from vidaccel_train.data.video_io import write_video
from vidaccel_train.predict import collect_inputs

from support import TINY_FIT, compose_config, run_cli
from support.outputs import full_disk, readonly_folder
from support.runs import predict_cli

TINY_KINETICS_FIT = [o for o in TINY_FIT if not o.startswith("data.synthetic")]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def artifact(smoke_run) -> Path:
    return smoke_run / "export" / "model_int8.pte"


@pytest.fixture(scope="module")
def short_video(tmp_path_factory, smoke_run) -> Path:
    config = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["run_config"]
    synthetic = config["data"]["synthetic"]
    spec = SyntheticSpec(**{**synthetic, "classes": tuple(synthetic["classes"]), "duration_s": 2.0})
    video = tmp_path_factory.mktemp("videos") / "move_left.mp4"
    write_video(video, list(render_clip(spec, "move_left", np.random.default_rng(3))), fps=spec.fps)
    return video


# ---------------------------------------------------------------- loader workers


def test_kinetics_loader_workers_default_to_the_cpus_this_process_may_use(tmp_path, data_dir, tiny_dataset):
    cpus = len(os.sched_getaffinity(0))
    cfg = compose_config(
        tmp_path,
        data_dir,
        [
            *(o for o in TINY_KINETICS_FIT if not o.startswith("data.num_workers")),  # data=kinetics's own default
            "data=kinetics",
            f"data.root={tiny_dataset}",
            "data.num_classes=4",
        ],
    )
    datamodule = instantiate(cfg.data)
    assert datamodule.num_workers == min(8, cpus)
    datamodule.prepare_data()
    datamodule.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        next(iter(datamodule.train_dataloader()))
    assert not [w for w in caught if "excessive worker creation" in str(w.message)]


# ---------------------------------------------------------------- linked folders


def _link_half_elsewhere(split_dir: Path, elsewhere: Path) -> list[Path]:
    """Move every second clip of ``split_dir`` (flat) into ``elsewhere/part2`` and link that
    folder in as ``split_dir/part2``, with a link in it back up to the split (a loop)."""
    moved = []
    (elsewhere / "part2").mkdir(parents=True)
    for clip in sorted(split_dir.glob("*.mp4"))[::2]:
        moved.append(Path(shutil.move(clip, elsewhere / "part2" / clip.name)))
    (split_dir / "part2").symlink_to(elsewhere / "part2", target_is_directory=True)
    (elsewhere / "part2" / "back_up").symlink_to(split_dir, target_is_directory=True)
    return moved


def test_annotations_find_clips_in_linked_folders_and_loops_end(tmp_path, tiny_dataset):
    from test_layouts import _as_annotations

    root = tmp_path / "k400"
    listed = _as_annotations(tiny_dataset, root)
    moved = _link_half_elsewhere(root / "train", tmp_path / "other_disk")
    train = index_split(root, "train")
    assert not train.missing, list(train.missing.items())[:3]
    assert len(train.samples) == len(listed["train"])
    found = {Path(path).name for path, _ in train.samples}
    assert {clip.name for clip in moved} <= found


def test_predict_on_a_folder_follows_linked_folders_once(tmp_path, tiny_dataset):
    videos = tmp_path / "videos"
    shutil.copytree(tiny_dataset / "test" / "move_left", videos)
    moved = _link_half_elsewhere(videos, tmp_path / "other_disk")
    found = [Path(path) for path, _ in collect_inputs([str(videos)], ["move_left"])]
    assert len(found) == len({p.name for p in found}) == len(list((tiny_dataset / "test" / "move_left").glob("*.mp4")))
    assert {p.name for p in moved} <= {p.name for p in found}
    assert videos_under(videos) == sorted(found)


# ---------------------------------------------------------------- Unicode normal forms


def test_class_folders_named_on_a_mac_match_a_labels_file_typed_elsewhere(tmp_path, tiny_dataset):
    names = {"move_left": "à gauche", "move_right": "à droite", "move_up": "en haut", "move_down": "en bas"}
    root = tmp_path / "mac"
    for split in ("train", "val", "test"):
        for old, new in names.items():
            shutil.copytree(tiny_dataset / split / old, root / split / unicodedata.normalize("NFD", new))
    labels = [unicodedata.normalize("NFC", names[c]) for c in ("move_left", "move_right", "move_up", "move_down")]
    (root / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    index = index_split(root, "train")
    assert index.class_names == labels
    by_label = {label: Path(path).parent.name for path, label in index.samples}
    assert all(unicodedata.normalize("NFC", by_label[i]) == labels[i] for i in by_label)
    # Without labels.txt the order comes from the folders, in NFC whatever the disk holds.
    (root / "labels.txt").unlink()
    assert index_split(root, "train").class_names == sorted(labels)
    # A predict list file typed in NFD against a model's NFC classes.
    listing = tmp_path / "list.txt"
    clip = index.samples[0][0]
    listing.write_text(f"{clip} {unicodedata.normalize('NFD', labels[index.samples[0][1]])}\n", encoding="utf-8")
    assert collect_inputs([str(listing)], labels) == [(clip, index.samples[0][1])]


# ---------------------------------------------------------------- timeline names


def test_timelines_of_videos_with_the_same_name_never_overwrite_each_other(artifact, short_video, tmp_path):
    videos = [tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", tmp_path / "clip_2.mp4"]
    for video in videos:
        video.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(short_video, video)
    out = tmp_path / "timelines"
    result = predict_cli(artifact, *videos, "--timeline", "--out", out, "--stride", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    written = {p.name for p in out.iterdir()}
    assert written == {f"{n}.timeline.{s}" for n in ("clip", "clip_2", "clip_3") for s in ("json", "csv", "png")}
    sources = {json.loads((out / f"{n}.timeline.json").read_text())["video"] for n in ("clip", "clip_2", "clip_3")}
    assert sources == {str(v) for v in videos}


# ---------------------------------------------------------------- outputs that cannot be written


def test_predict_into_a_read_only_folder_is_one_error_line_before_any_work(artifact, short_video, tmp_path):
    with readonly_folder(tmp_path / "ro") as folder:
        result = predict_cli(artifact, short_video, "--csv", folder / "predictions.csv")
        assert result.returncode == 2, result.stderr[-2000:]
        assert _errors(result.stderr) == [
            f"error: cannot write --csv {folder / 'predictions.csv'}: Read-only file system"
        ]
        assert "move_left" not in result.stdout  # said before predicting
        result = predict_cli(artifact, short_video, "--timeline", "--out", folder / "timelines")
        assert result.returncode == 2 and len(_errors(result.stderr)) == 1, result.stderr[-2000:]
        assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
        assert not any(folder.iterdir())


def test_a_disk_that_fills_while_predict_writes_is_one_error_line_and_no_half_file(artifact, short_video, tmp_path):
    with full_disk(tmp_path / "small", size_kib=64) as limit:
        folder = tmp_path / "small"
        if limit is None:  # a real tmpfs: fill it, leaving room for empty files only
            filler = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(filler, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(filler)
        result = predict_cli(artifact, short_video, short_video, "--csv", folder / "predictions.csv", preexec_fn=limit)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = _errors(result.stderr)
        assert len(errors) == 1 and errors[0].startswith(f"error: cannot write --csv {folder / 'predictions.csv'}")
        assert sorted(p.name for p in folder.iterdir()) == (["filler"] if limit is None else [])


def test_training_into_a_read_only_folder_is_one_error_line(tmp_path, data_dir):
    with readonly_folder(tmp_path / "ro") as folder:
        result = run_cli(folder / "run", data_dir, TINY_FIT)
        assert result.returncode == 2, result.stderr[-2000:]
        assert _errors(result.stderr) == [
            f"error: cannot write the run folder (hydra.run.dir) {folder / 'run'}: Read-only file system"
        ]
        assert "Traceback" not in result.stderr
