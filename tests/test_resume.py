"""A fit killed at any point resumes with `ckpt_path=last` in the same run directory and ends
with the metrics and weights of a run that was never stopped; SIGTERM saves a checkpoint first."""

import csv
import json
import os
import signal
import subprocess

import pytest
import torch

from support import TINY_FIT, run_cli

# Two fp32 epochs, then QAT (observers frozen for the last epoch): 3 train batches an epoch, with
# the two persistent loader workers every real run has (they draw indices as soon as a loader starts).
RUN = [
    *(o for o in TINY_FIT if not o.startswith("data.num_workers")),
    "data.num_workers=2",
    "quant=qat",
    "quant.start_epoch=2",
    "quant.freeze_observer_epoch=3",
    "trainer.max_epochs=4",
    "optim=adamw",
]
COMPARED = ("val/top1", "val/loss", "val_fp32/loss", "test/top1", "test/loss", "test/clip_top1", "test_fp32/loss")


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def unstopped(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("unstopped")
    result = run_cli(run_dir, data_dir, RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _kill_then_resume(run_dir, data_dir, kill: list[str], extra: list[str] = ()):
    killed = run_cli(run_dir, data_dir, [*RUN, *extra, "+callbacks.kill._target_=support.callbacks.KillAt", *kill])
    resumed = run_cli(run_dir, data_dir, [*RUN, *extra, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return killed, resumed


def _validation_by_epoch(run_dir):
    with open(run_dir / "csv" / "metrics.csv", newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row.get("val/loss")]
    return [int(float(row["epoch"])) for row in rows], [float(row["val/loss"]) for row in rows]


def _assert_same_end(run_dir, unstopped, compared=COMPARED):
    expected, got = _metrics(unstopped), _metrics(run_dir)
    for key in compared:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    reference, final = _weights(unstopped), _weights(run_dir)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_sigkill_inside_the_qat_phase_mid_epoch(tmp_path, data_dir, unstopped):
    killed, _ = _kill_then_resume(
        tmp_path, data_dir, ["+callbacks.kill.stage=train", "+callbacks.kill.epoch=2", "+callbacks.kill.batch=1"]
    )
    assert killed.returncode == -signal.SIGKILL
    _assert_same_end(tmp_path, unstopped)
    # The log keeps the epochs before the kill (Lightning's own CSV logger deletes them on resume).
    (epochs, losses), (expected_epochs, expected_losses) = (
        _validation_by_epoch(tmp_path),
        _validation_by_epoch(unstopped),
    )
    assert epochs == expected_epochs == [0, 1, 2, 3]
    assert losses == pytest.approx(expected_losses, abs=1e-6)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes_mid_epoch(tmp_path, data_dir, unstopped):
    killed = run_cli(
        tmp_path,
        data_dir,
        [
            *RUN,
            "+callbacks.kill._target_=support.callbacks.KillAt",
            "+callbacks.kill.stage=train",
            "+callbacks.kill.epoch=3",
            "+callbacks.kill.batch=0",
            "+callbacks.kill.signal=SIGTERM",
        ],
    )
    assert killed.returncode != 0 and not (tmp_path / "metrics.json").exists()
    saved = torch.load(tmp_path / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 3 and saved["global_step"] == 3 * 3 + 1  # one batch into the last epoch
    resumed = run_cli(tmp_path, data_dir, [*RUN, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after its first 1 batches" in resumed.stdout + resumed.stderr
    _assert_same_end(tmp_path, unstopped)


@pytest.mark.slow
def test_sigkill_in_the_first_epoch(tmp_path, data_dir, unstopped):
    killed, _ = _kill_then_resume(
        tmp_path, data_dir, ["+callbacks.kill.stage=train", "+callbacks.kill.epoch=0", "+callbacks.kill.batch=1"]
    )
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "checkpoints" / "last.ckpt").exists() is not False
    _assert_same_end(tmp_path, unstopped)


@pytest.mark.slow
def test_sigkill_during_validation(tmp_path, data_dir, unstopped):
    killed, _ = _kill_then_resume(
        tmp_path, data_dir, ["+callbacks.kill.stage=validation", "+callbacks.kill.epoch=1", "+callbacks.kill.batch=0"]
    )
    assert killed.returncode == -signal.SIGKILL
    _assert_same_end(tmp_path, unstopped)


@pytest.mark.slow
def test_sigkill_during_export_redoes_it_whole(tmp_path, data_dir, unstopped):
    with_export = ["callbacks.export.enabled=true"]
    killed = run_cli(
        tmp_path,
        data_dir,
        [*RUN, *with_export, "+callbacks.kill._target_=support.callbacks.KillAt", "+callbacks.kill.stage=export"],
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "export" / "manifest.json").exists()  # cut off: no export that looks finished
    resumed = run_cli(tmp_path, data_dir, [*RUN, *with_export, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == ["model_int8.pte"]  # the default precisions
    assert sorted(p.name for p in (tmp_path / "export").glob("*.pte")) == ["model_int8.pte"]
    assert not list(tmp_path.glob(".export.*"))  # the killed export's staging folder is gone
    # The fit had ended before the kill: the resumed run only tests (and exports) again.
    _assert_same_end(tmp_path, unstopped, [key for key in COMPARED if key.startswith("test")])


@pytest.mark.slow
def test_sigkill_with_two_clips_per_video_resumes_exactly(tmp_path, data_dir):
    two_clips = ["data.train_clips_per_video=2"]
    unstopped = tmp_path / "unstopped"
    assert run_cli(unstopped, data_dir, [*RUN, *two_clips]).returncode == 0
    killed, _ = _kill_then_resume(
        tmp_path / "killed",
        data_dir,
        ["+callbacks.kill.stage=train", "+callbacks.kill.epoch=2", "+callbacks.kill.batch=1"],
        two_clips,
    )
    assert killed.returncode == -signal.SIGKILL
    _assert_same_end(tmp_path / "killed", unstopped)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage"])
def test_a_damaged_checkpoint_is_named_before_any_work(tmp_path, data_dir, damage):
    from vidaccel_train.errors import CheckpointError
    from vidaccel_train.train import run

    from support import compose_config

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    path = checkpoints / "last.ckpt"
    torch.save({"state_dict": {"w": torch.arange(10_000.0)}, "epoch": 1}, path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[len(data) // 3] ^= 0xFF  # inside the tensor data: only its checksum tells
    else:
        data = bytearray(b"not a checkpoint" * 100)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path}: .*(truncated or corrupted|fails its checksum)"):
        run(compose_config(tmp_path, data_dir, [*TINY_FIT, "ckpt_path=last"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # nothing else was written


def test_a_failed_checkpoint_write_is_named_and_leaves_no_temporary(tmp_path, data_dir):
    """A write that runs out of space (a staging file that is /dev/full) removes its temporary
    file and says where, how much is free and how much it needed; a resume removes stale ones."""
    from vidaccel_train.errors import OutputError
    from vidaccel_train.train import run

    from support import compose_config

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("last.ckpt", "epoch_000.ckpt"):
        (checkpoints / f".{name}.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(
        OutputError, match=rf"{checkpoints} has [0-9.]+ MB free and the checkpoint needs [0-9.]+ MB"
    ) as error:
        run(compose_config(tmp_path, data_dir, [*TINY_FIT, "trainer.max_epochs=1"]))
    failed = str(error.value).split("checkpoint ", 1)[1].split(":", 1)[0]  # the first checkpoint written
    assert failed in ("last.ckpt", "epoch_000.ckpt") and not (checkpoints / f".{failed}.tmp-{os.getpid()}").is_symlink()
    for planted in checkpoints.glob(".*.tmp-*"):
        planted.unlink()

    (checkpoints / ".last.ckpt.tmp-999999").write_bytes(b"partial")  # a run killed while saving
    run(compose_config(tmp_path, data_dir, [*TINY_FIT, "trainer.max_epochs=1", "test=false", "ckpt_path=last"]))
    assert not list(checkpoints.glob(".*.tmp-*"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MB tmpfs (needs root, as CI and the developer machines have); skips elsewhere."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_is_one_error_line(small_filesystem, data_dir):
    result = run_cli(small_filesystem / "run", data_dir, [*TINY_FIT, "trainer.max_epochs=1"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: no space left for checkpoint") and str(small_filesystem / "run" / "checkpoints") in last
    )
    assert not list(small_filesystem.glob("**/.*.tmp-*"))


def test_atomic_writes_leave_the_old_or_the_new_never_a_mix(tmp_path):
    from vidaccel_train.files import atomic_path, remove_leftovers, write_atomic

    write_atomic(tmp_path / "a.bin", b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.bin") as staging:
            staging.write_bytes(b"ne")
            raise RuntimeError("killed halfway")
    assert (tmp_path / "a.bin").read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    folder = tmp_path / "export"
    for generation in ("old", "new"):
        with atomic_path(folder) as staging:
            staging.mkdir()
            (staging / "model.pte").write_text(generation)
    assert (folder / "model.pte").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin",
        "export",
    ]
    (tmp_path / ".export.tmp-999999").mkdir()  # a writer killed in another process
    (tmp_path / ".export.old.tmp-999999").mkdir()  # killed between its two renames
    (tmp_path / ".export_b.tmp-999999").mkdir()  # another export's: not this one's to remove
    removed = sorted(p.name for p in remove_leftovers(tmp_path, "export"))
    assert removed == [".export.old.tmp-999999", ".export.tmp-999999"] and (tmp_path / ".export_b.tmp-999999").is_dir()
