"""Every Kinetics layout on disk (class folders, official annotation CSVs, PyTorchVideo list
files) indexes to the same clips and labels, auto-detected, and trains through one code path."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from hydra.utils import instantiate

from vidaccel_train.data.layouts import detect_layout, index_split
from vidaccel_train.errors import DatasetLayoutError
from vidaccel_train.train import run

from support import TINY_FIT, TINY_SPEC, compose_config

# The tiny run without its generated-data settings, for data=kinetics.
TINY_KINETICS_FIT = [o for o in TINY_FIT if not o.startswith("data.synthetic")]
SPLITS = {"train": "train", "val": "validate", "test": "test"}  # Kinetics names its val split "validate"


def _as_annotations(source: Path, target: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Kinetics' official form of ``source``: annotations/<split>.csv and flat clip folders with
    ``<youtube_id>_<start>_<end>.mp4`` names; returns (clip name, label, source clip) per split."""
    listed = {}
    (target / "annotations").mkdir(parents=True)
    for ours, theirs in SPLITS.items():
        (target / theirs).mkdir()
        rows, listed[ours] = [], []
        for number, clip in enumerate(sorted((source / ours).glob("*/*.mp4"))):
            youtube_id, start = f"{clip.parent.name[:5]}{number:06d}", 10 * number
            stem = f"{youtube_id}_{start:06d}_{start + 10:06d}"
            shutil.copy(clip, target / theirs / f"{stem}.mp4")
            rows.append([clip.parent.name.replace("_", " "), youtube_id, start, start + 10, theirs])
            listed[ours].append((stem, clip.parent.name.replace("_", " "), str(clip)))
        with open(target / "annotations" / f"{theirs}.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(rows)
    return listed


def _as_list_files(source: Path, target: Path) -> None:
    """PyTorchVideo's list-file form of ``source``: ``<split>.txt`` with ``<path> <label>`` lines."""
    target.mkdir(parents=True)
    shutil.copy(source / "labels.txt", target / "labels.txt")
    names = (source / "labels.txt").read_text().split()
    for ours, theirs in SPLITS.items():
        lines = [f"{clip} {names.index(clip.parent.name)}" for clip in sorted((source / ours).glob("*/*.mp4"))]
        (target / f"{theirs}.txt").write_text("\n".join(lines) + "\n")


def test_annotation_csvs_index_the_clips_they_name_and_report_missing_rows(tmp_path, tiny_dataset):
    root = tmp_path / "k400"
    listed = _as_annotations(tiny_dataset, root)
    gone = listed["train"][0][0]
    (root / "train" / f"{gone}.mp4").unlink()  # a row whose clip never downloaded

    assert detect_layout(root, "train") == "annotations"
    assert detect_layout(root, "val") == "annotations"  # finds validate.csv
    train = index_split(root, "train")
    assert train.class_names == sorted(name.replace("_", " ") for name in TINY_SPEC.classes)
    assert len(train.samples) == len(listed["train"]) - 1
    assert list(train.missing) == [str(root / "train" / gone)]
    for path, label in train.samples:
        stem = Path(path).stem
        assert train.class_names[label] == {name: label for name, label, _ in listed["train"]}[stem]


def test_all_layouts_agree_on_clips_and_labels(tmp_path, tiny_dataset):
    annotations, lists = tmp_path / "csv", tmp_path / "lists"
    annotated = _as_annotations(tiny_dataset, annotations)
    _as_list_files(tiny_dataset, lists)
    assert detect_layout(tiny_dataset, "train") == "class_folders"
    assert detect_layout(lists, "train") == "list_file"
    for split in ("train", "val"):
        folders = index_split(tiny_dataset, split)
        listed = index_split(lists, SPLITS[split])
        from_csv = index_split(annotations, split)
        assert folders.samples == listed.samples and folders.class_names == listed.class_names
        source_of = {name: source for name, _, source in annotated[split]}
        assert {(source_of[Path(p).stem], from_csv.class_names[label]) for p, label in from_csv.samples} == {
            (p, folders.class_names[label].replace("_", " ")) for p, label in folders.samples
        }


def test_layout_errors_say_what_is_expected(tmp_path, tiny_dataset):
    with pytest.raises(DatasetLayoutError, match="class folders.*annotations.*list files"):
        detect_layout(tmp_path, "train")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.txt").write_text("clip.mp4 walking\n")
    with pytest.raises(DatasetLayoutError, match=r"train.txt:1: expected '<path> <label index>'"):
        index_split(bad, "train")
    root = tmp_path / "unlabelled"
    _as_annotations(tiny_dataset, root)
    rows = (root / "annotations" / "test.csv").read_text().splitlines()
    (root / "annotations" / "test.csv").write_text(
        "\n".join(["youtube_id,time_start,time_end,split"] + [r.split(",", 1)[1] for r in rows[1:]])
    )
    with pytest.raises(DatasetLayoutError, match="has no labels"):
        index_split(root, "test")


def test_kinetics_config_trains_on_annotation_csvs_and_reports_missing_clips(tmp_path, data_dir, tiny_dataset):
    """`data=kinetics data.root=...` on the official layout: fit, multi-view test, report."""
    root = tmp_path / "k400"
    listed = _as_annotations(tiny_dataset, root)
    gone = listed["val"][1][0]
    (root / "validate" / f"{gone}.mp4").unlink()
    cfg = compose_config(
        tmp_path,
        data_dir,
        [
            *TINY_KINETICS_FIT,
            "data=kinetics",
            f"data.root={root}",
            "data.num_classes=4",
            "data.splits.val=validate",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.test_views={clips:2,crops:3}",
            "trainer.max_epochs=1",
        ],
    )
    metrics = run(cfg)
    assert {"test/top1", "test/top5", "test/clip_top1", "test/mean_class_accuracy"} <= set(metrics)
    report = (tmp_path / "bad_files.txt").read_text()
    assert gone in report and report.count("\n") == 1
    checkpoint_names = json.loads((tmp_path / "metrics.json").read_text())["tested_checkpoint"]
    assert checkpoint_names
    assert (tmp_path / "confusion_matrix_test.png").stat().st_size > 0
    matrix = list(csv.reader(open(tmp_path / "confusion_matrix_test.csv")))
    assert matrix[0][1:] == sorted(name.replace("_", " ") for name in TINY_SPEC.classes)
    assert sum(int(v) for row in matrix[1:] for v in row[1:]) == len(listed["test"])  # every test video once


def test_missing_root_names_the_layouts_and_the_generated_data(tmp_path, data_dir):
    cfg = compose_config(tmp_path, data_dir, [*TINY_KINETICS_FIT, "data=kinetics", f"data.root={tmp_path / 'nowhere'}"])
    datamodule = instantiate(cfg.data)
    with pytest.raises(DatasetLayoutError, match="missing or empty.*annotations.*data=synthetic"):
        datamodule.prepare_data()


def _mac_and_notebook_litter(split_dir: Path) -> None:
    """What folders that went through a Mac, a zip or a notebook hold beside the clips."""
    for clip in list(split_dir.glob("*/*.mp4")):
        (clip.parent / f"._{clip.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # AppleDouble sidecar
        (clip.parent / ".DS_Store").write_bytes(b"Bud1")
    checkpoints = split_dir / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(next(split_dir.glob("*/*.mp4")), checkpoints / "clip-checkpoint.mp4")
    macosx = split_dir / "__MACOSX" / "move_up"
    macosx.mkdir(parents=True)
    (macosx / "._clip.mp4").write_bytes(b"\x00\x05\x16\x07")


def test_hidden_files_and_folders_are_not_clips_or_classes(tmp_path, tiny_dataset):
    root = tmp_path / "root"
    shutil.copytree(tiny_dataset, root)
    (root / "labels.txt").unlink()  # the classes come from the folders
    before = {split: index_split(tiny_dataset, split).samples for split in ("train", "test")}
    for split in ("train", "test"):
        _mac_and_notebook_litter(root / split)
    for split in ("train", "test"):
        index = index_split(root, split)
        assert index.class_names == sorted(TINY_SPEC.classes)
        assert [Path(p).name for p, _ in index.samples] == [Path(p).name for p, _ in before[split]]
        assert index.ignored == []  # hidden entries are not even counted as stray files


def test_every_video_extension_in_any_case_is_indexed_and_other_files_are_named(tmp_path, tiny_dataset, caplog):
    root = tmp_path / "root"
    shutil.copytree(tiny_dataset, root)
    folder = root / "train" / "move_up"
    clip = next(folder.glob("*.mp4"))
    for extension in (".m4v", ".3gp", ".MTS", ".MOV", ".ts", ".MP4"):
        shutil.copy(clip, folder / f"phone_export{extension}")
    (folder / "notes.txt").write_text("shot on a phone")
    with caplog.at_level("WARNING"):
        index = index_split(root, "train")
    names = {Path(p).name for p, label in index.samples if label == index.class_names.index("move_up")}
    assert {f"phone_export{e}" for e in (".m4v", ".3gp", ".MTS", ".MOV", ".ts", ".MP4")} <= names
    assert [Path(p).name for p in index.ignored] == ["notes.txt"]
    assert "notes.txt" in caplog.text


def test_csvs_saved_by_excel_with_a_byte_order_mark_and_crlf_are_read(tmp_path, tiny_dataset):
    root = tmp_path / "annotations"
    listed = _as_annotations(tiny_dataset, root)
    for csv_file in (root / "annotations").glob("*.csv"):
        text = csv_file.read_text().replace("\r\n", "\n").replace("\n", "\r\n")
        csv_file.write_bytes(b"\xef\xbb\xbf" + text.encode())
    index = index_split(root, "train")
    assert len(index.samples) == len(listed["train"]) and not index.missing

    lists = tmp_path / "lists"
    _as_list_files(tiny_dataset, lists)
    for list_file in [*lists.glob("*.txt")]:
        list_file.write_bytes(b"\xef\xbb\xbf" + list_file.read_text().replace("\n", "\r\n").encode())
    index = index_split(lists, "train", "list_file")
    assert index.class_names == (tiny_dataset / "labels.txt").read_text().split()
    assert len(index.samples) == len(index_split(tiny_dataset, "train").samples)


def test_a_wrong_class_count_names_the_classes_found(tmp_path, data_dir, tiny_dataset):
    root = tmp_path / "root"
    shutil.copytree(tiny_dataset, root)
    (root / "labels.txt").unlink()
    shutil.copytree(root / "train" / "move_up", root / "train" / "Untitled Folder")
    cfg = compose_config(
        tmp_path / "run", data_dir, ["data=kinetics", f"data.root={root}", "data.num_classes=4", *TINY_KINETICS_FIT]
    )
    datamodule = instantiate(cfg.data)
    with pytest.raises(
        DatasetLayoutError, match=r"has 5 classes \(Untitled Folder, move_down, move_left, move_right, move_up\)"
    ):
        datamodule.setup("fit")
