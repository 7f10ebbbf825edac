"""`predict` as users run it after training: the test protocol, many videos per call, labelled
splits, long videos as a timeline, bad input; on the smoke run's int8 program."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidaccel_train.data.clips import aggregate_views
from vidaccel_train.data.synthetic import SyntheticSpec, render_clip
from vidaccel_train.data.video_io import write_video
from vidaccel_train.export import ExecuTorchModel
from vidaccel_train.export.verify import collect_logits
from vidaccel_train.predict import Views, predict
from vidaccel_train.predict.__main__ import main

from support.runs import predict_cli


@pytest.fixture(scope="module")
def artifact(smoke_run) -> Path:
    return smoke_run / "export" / "model_int8.pte"


@pytest.fixture(scope="module")
def run_config(smoke_run) -> dict:
    # The smoke run's own checkpoint, written by this test session.
    return torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["run_config"]


@pytest.fixture(scope="module")
def test_split(run_config):
    datamodule = instantiate(OmegaConf.create(run_config).data)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def test_predict_on_the_test_split_gives_the_exports_verification(artifact, test_split):
    """predict's default views are the manifest's test views: its probabilities for each test
    video equal the export's verification of the same program, and so does its top-1."""
    manifest = json.loads((artifact.parent / "manifest.json").read_text())
    assert manifest["test_views"] == {"clips": 1, "crops": 3}
    logits, labels = collect_logits(test_split.test_dataloader(), {"int8": ExecuTorchModel(artifact)})
    expected = aggregate_views(logits["int8"])

    result = predict_cli(artifact, "--data-root", test_split.dataset_dir, "--split", "test", "--json", "--topk", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    *records, summary = [json.loads(line) for line in result.stdout.splitlines()]
    samples = test_split.datasets["test"].samples
    assert [r["video"] for r in records] == [path for path, _ in samples]
    classes = manifest["classes"]
    top1 = next(a["top1"] for a in manifest["artifacts"] if a["file"] == artifact.name)
    assert summary["summary"]["videos"] == len(samples) and summary["summary"]["top1"] == pytest.approx(top1, abs=1e-6)
    for record, probabilities, (_, label) in zip(records, expected, samples):
        assert record["label"] == classes[label]
        got = {p["label"]: p["score"] for p in record["predictions"]}
        assert got == pytest.approx({name: float(p) for name, p in zip(classes, probabilities)}, abs=1e-6)

    table = predict_cli(artifact, "--data-root", test_split.dataset_dir, "--split", "test", "--workers", "2")
    assert table.returncode == 0, table.stderr[-2000:]
    assert f"{len(samples)} labelled videos: top-1 {top1:.4f}" in table.stdout
    assert "confusion (rows: true class" in table.stdout
    assert table.stderr == ""  # nothing from ExecuTorch's CPU probe or any other library


def test_many_inputs_per_call_with_a_bad_file_named_once(artifact, test_split, tmp_path):
    samples = test_split.datasets["test"].samples
    folder = tmp_path / "clips" / "nested"
    folder.mkdir(parents=True)
    for path, _ in samples[:2]:
        shutil.copy(path, folder / Path(path).name.replace(".mp4", ".MP4"))
    (folder / "._sidecar.MP4").write_bytes(b"\x00\x05\x16\x07")  # hidden: not an input
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    classes = test_split.class_names
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{path} {classes[label]}\n" for path, label in samples[2:5]))
    out_csv = tmp_path / "predictions.csv"

    result = predict_cli(artifact, tmp_path / "clips", listed, broken, "--json", "--csv", out_csv, "--topk", "2")
    assert result.returncode == 1  # one unreadable video
    *records, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert summary["summary"]["videos"] == 3  # the labelled ones (the list file's)
    assert len(records) == 6 and [bool(r.get("error")) for r in records] == [False] * 5 + [True]
    assert records[-1]["video"] == str(broken) and [line for line in result.stderr.splitlines()] == [
        f"error: {broken}: {records[-1]['error']}"
    ]
    assert all(len(r["predictions"]) == 2 for r in records[:5]) and [r.get("label") for r in records[2:5]] == [
        classes[label] for _, label in samples[2:5]
    ]
    with open(out_csv, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["video"] for row in rows] == [r["video"] for r in records] and rows[-1]["error"]
    assert rows[0]["prediction1"] == records[0]["predictions"][0]["label"]


def test_views_can_be_changed_and_change_the_probabilities(artifact, test_split):
    video = test_split.datasets["test"].samples[0][0]
    default, one = predict(artifact, video, topk=4), predict(artifact, video, topk=4, views=Views(1, 1))
    assert dict(default) != pytest.approx(dict(one), abs=1e-6)  # three crops against the centre crop alone
    result = predict_cli(artifact, video, "--views", "1x1", "--json", "--topk", "4")
    assert {p["label"]: p["score"] for p in json.loads(result.stdout)["predictions"]} == pytest.approx(
        dict(one), abs=1e-6
    )


def test_a_long_video_becomes_a_timeline_of_what_happens_when(artifact, run_config, tmp_path):
    """Two seconds moving left, then two moving right: the windows inside each part say so, and
    the CSV, JSON and PNG are written."""
    spec = SyntheticSpec(
        **{
            **run_config["data"]["synthetic"],
            "classes": tuple(run_config["data"]["synthetic"]["classes"]),
            "duration_s": 2.0,
        }
    )
    rng = np.random.default_rng(11)
    frames = [*render_clip(spec, "move_left", rng), *render_clip(spec, "move_right", rng)]
    video = tmp_path / "left_then_right.mp4"
    write_video(video, frames, fps=spec.fps)
    out = tmp_path / "timelines"
    result = predict_cli(artifact, video, "--timeline", "--stride", "0.2", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "left_then_right.timeline.json").read_text())
    windows = summary["windows"]
    assert summary["duration_s"] == pytest.approx(4.0, abs=0.05) and len(windows) > 10
    first = [w["top"][0]["label"] for w in windows if w["end_s"] <= 2.0]
    second = [w["top"][0]["label"] for w in windows if w["start_s"] >= 2.0]
    assert first.count("move_left") > len(first) / 2 and second.count("move_right") > len(second) / 2
    with open(out / "left_then_right.timeline.csv", newline="") as stream:
        assert len(list(csv.DictReader(stream))) == len(windows)
    assert (out / "left_then_right.timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert "overall" in result.stdout and result.stderr == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}", "{video}"], "does not exist"),
        (["{artifact}", "{video}", "--no-such-option"], "unrecognized arguments"),
        (["{artifact}", "{empty}"], "no video files"),
        (["{artifact}", "{video}", "--views", "ten"], "CLIPSxCROPS"),
        (["{artifact}", "{tmp}/absent.mp4"], "no such file"),
        (["{artifact}"], "name videos"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(artifact, test_split, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    values = {
        "missing": tmp_path / "model.pte",
        "video": test_split.datasets["test"].samples[0][0],
        "artifact": artifact,
        "empty": tmp_path / "empty",
        "tmp": tmp_path,
    }
    try:
        code = main([a.format(**values) for a in args])
    except SystemExit as exit:  # argparse's own exit
        code = exit.code
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert out == ""


def test_an_unknown_option_is_one_line_from_the_command_too(artifact):
    result = predict_cli(artifact, "clip.mp4", "--frobnicate")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: unrecognized arguments: --frobnicate (see --help)\n"


def test_list_files_take_class_names_with_spaces_csv_and_a_header(tmp_path):
    from vidaccel_train.predict.inputs import read_list as _read_list

    classes = ["abseiling", "air drumming", "answering questions"]
    (tmp_path / "my clip.mp4").write_bytes(b"")
    (tmp_path / "b.mp4").write_bytes(b"")
    plain = tmp_path / "list.txt"
    plain.write_text("# phone videos\nmy clip.mp4 air drumming\nb.mp4 2\nb.mp4\n")
    assert _read_list(plain, classes) == [
        (str(tmp_path / "my clip.mp4"), 1),
        (str(tmp_path / "b.mp4"), 2),
        (str(tmp_path / "b.mp4"), None),
    ]
    table = tmp_path / "list.csv"
    table.write_text("path,label\nmy clip.mp4,answering questions\nb.mp4,abseiling\n")
    assert _read_list(table, classes) == [(str(tmp_path / "my clip.mp4"), 2), (str(tmp_path / "b.mp4"), 0)]
