"""Runs of the real pipeline: Lightning fast_dev_run, and the smoke experiment from the CLI."""

import copy
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from vidaccel_train.errors import CheckpointError
from vidaccel_train.models import create_model
from vidaccel_train.train import run
from vidaccel_train.training import QuantState, VideoClassifier

from support import TINY_FIT, TINY_RUN, compose_config


@pytest.mark.parametrize("model", ["x3d_tiny", "x3d_xs", "x3d_s"])
def test_fast_dev_run_trains_validates_and_tests(tmp_path, data_dir, model):
    # Videos as long as X3D-S's clip (13 x 6 frames at 30 fps): a longer clip is a config error.
    overrides = [
        *TINY_RUN,
        f"model={model}",
        "model.clip.crop_size=32",
        "debug=fdr",
        "data.batch_size=2",
        "data.synthetic.duration_s=2.8",
    ]
    metrics = run(compose_config(tmp_path, data_dir, overrides))
    assert {"train/loss", "val/top1", "test/top1", "test/top5"} <= set(metrics)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["test/top1"] == metrics["test/top1"]


def test_fast_dev_run_with_the_default_qat_runs_its_one_epoch_quantized(tmp_path, data_dir):
    """``+trainer.fast_dev_run=true`` on the default schedule (QAT the last of many epochs):
    Lightning runs one short epoch, which the QAT callback makes its QAT epoch."""
    overrides = [*TINY_RUN, "quant=qat", "trainer.max_epochs=5", "+trainer.fast_dev_run=true"]
    metrics = run(compose_config(tmp_path, data_dir, overrides))
    assert {"train/loss", "test/top1", "test_fp32/top1"} <= set(metrics)  # tested quantized, and in fp32


def test_smoke_experiment_learns_motion_well_above_chance_and_keeps_it_in_int8(smoke_run):
    written = json.loads((smoke_run / "metrics.json").read_text())
    metrics = written["metrics"]
    assert written["tested_checkpoint"].endswith("last.ckpt")  # the QAT model at the end of training
    assert metrics["test_fp32/top1"] >= 0.6  # 4 classes: chance is 0.25
    # The converted int8 model is at most one of the 64 test videos behind the same weights in fp32.
    assert metrics["test/top1"] >= metrics["test_fp32/top1"] - 1 / 64
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    assert (smoke_run / "csv" / "metrics.csv").is_file()
    assert (smoke_run / "smoke.log").is_file()


@pytest.mark.slow
def test_two_clips_per_video_learn_as_well_as_one(tmp_path, data_dir):
    """The smoke run with two clips per decoded video: the same accuracy floor as with one."""
    metrics = run(
        compose_config(
            tmp_path,
            data_dir,
            [
                "experiment=smoke",
                "data.train_clips_per_video=2",
                "callbacks.export.enabled=false",
                "callbacks.rich_progress_bar=null",
            ],
        )
    )
    assert metrics["test_fp32/top1"] >= 0.6, metrics  # 4 classes: chance is 0.25
    assert metrics["test/top1"] >= metrics["test_fp32/top1"] - 1 / 64  # int8: at most one of the 64 test videos apart
    assert metrics["train/loss"] < 0.5  # the loss stalled at ln 2 = 0.69 when pairs of classes merged


def test_checkpoints_carry_config_and_label_names(smoke_run):
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["class_names"] == ["move_left", "move_right", "move_up", "move_down"]
    assert ckpt["run_config"]["model"]["name"] == "x3d_tiny"
    assert ckpt["run_config"]["data"]["synthetic"]["height"] == 64
    assert ckpt["quantization"]["mode"] == "qat" and ckpt["quantization"]["observers_frozen"]


def test_an_fp32_checkpoint_of_ours_loads_through_the_zoo(tmp_path, data_dir):
    run(compose_config(tmp_path, data_dir, [*TINY_FIT, "trainer.max_epochs=1", "test=false"]))
    path = tmp_path / "checkpoints" / "last.ckpt"
    net = create_model("x3d_tiny", num_classes=4, checkpoint=str(path)).eval()
    module = VideoClassifier.load_from_checkpoint(
        path, net=create_model("x3d_tiny", num_classes=4), optimizer=torch.optim.SGD
    ).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():  # module.net, not module: the module lays clips out channels-last first
        assert torch.equal(net(clip), module.net(clip))


def test_a_quantized_checkpoint_is_not_mistaken_for_train_form_weights(smoke_run):
    with pytest.raises(CheckpointError, match="quantized"):
        create_model("x3d_tiny", num_classes=4, checkpoint=str(smoke_run / "checkpoints" / "last.ckpt"))


def test_low_res_epochs_train_smaller_clips_then_full_size_with_workers(tmp_path, data_dir):
    """Progressive resizing: epoch 0 at half size, then full size; loader workers persist across
    the change (each item carries its epoch); evaluation, and the post-training calibration of a
    graph exported at the full size, see full-size clips."""
    shapes = tmp_path / "shapes.txt"
    overrides = [
        *TINY_FIT,
        "data.num_workers=2",
        "data.low_res_epochs=1",
        "data.low_res_scale=0.5",
        "trainer.max_epochs=2",
        "quant=ptq",
        "quant.calibration_batches=2",
        "+callbacks.shapes._target_=support.callbacks.RecordBatchShapes",
        f"+callbacks.shapes.path={shapes}",
    ]
    metrics = run(compose_config(tmp_path, data_dir, overrides))
    seen = [line.split() for line in shapes.read_text().splitlines()]
    assert {size for epoch, size in seen if epoch == "0"} == {"16x16"}
    assert {size for epoch, size in seen if epoch == "1"} == {"32x32"}
    assert {"val/top1", "test/top1", "test_fp32/top1"} <= set(metrics)


def test_low_res_epochs_end_where_qat_starts_with_workers(tmp_path, data_dir, caplog):
    """The QAT callback ends the low-resolution epochs where QAT starts (the quantized graph takes
    full-size clips), before the training loader and its persistent workers are built: 3 asked
    for, QAT from epoch 1, so epoch 0 at half size and the QAT epoch at full size."""
    shapes = tmp_path / "shapes.txt"
    overrides = [
        *TINY_FIT,
        "data.num_workers=2",
        "data.low_res_epochs=3",
        "data.low_res_scale=0.5",
        "trainer.max_epochs=2",
        "quant=qat",
        "quant.start_epoch=1",
        "test=false",
        "+callbacks.shapes._target_=support.callbacks.RecordBatchShapes",
        f"+callbacks.shapes.path={shapes}",
    ]
    with caplog.at_level("INFO"):
        metrics = run(compose_config(tmp_path, data_dir, overrides))
    assert "data.low_res_epochs=3: the low-resolution epochs end at epoch 1, where QAT starts" in caplog.text
    seen = [line.split() for line in shapes.read_text().splitlines()]
    assert {size for epoch, size in seen if epoch == "0"} == {"16x16"}
    assert {size for epoch, size in seen if epoch == "1"} == {"32x32"}
    assert {"val/top1", "val_fp32/top1"} <= set(metrics)  # the last epoch ran quantized


def test_the_qat_switch_saves_the_float_model_to_fine_tune_from(smoke_run):
    float_checkpoint = smoke_run / "checkpoints" / "fp32.ckpt"
    assert torch.load(float_checkpoint, map_location="cpu", weights_only=False)["quantization"] is None
    net = create_model("x3d_tiny", num_classes=7, checkpoint=str(float_checkpoint))  # a new label set: a new head
    assert net.projection.model.out_features == 7


@pytest.mark.parametrize("quantized", [False, True])
def test_channels_last_clips_change_speed_not_numbers(quantized):
    """module.channels_last (the default) hands the network channels-last clips and, once
    quantized, stores the deploy form's convolution weights channels-last (so its activations
    are too): same logits and gradients as the default layout, and the same int8 model."""
    torch.manual_seed(0)
    net = create_model("x3d_tiny", num_classes=4)
    clips, labels = torch.randn(3, 3, 4, 32, 32), torch.tensor([0, 1, 2])
    results, int8 = {}, {}
    for channels_last in (True, False):
        module = VideoClassifier(
            copy.deepcopy(net), functools.partial(torch.optim.SGD, lr=0.1), num_classes=4, channels_last=channels_last
        )
        if quantized:
            module.enter_quantization(QuantState("qat", clips.shape[1:]))
        seen = []
        module.net.register_forward_pre_hook(
            lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
        )
        module.train()
        torch.manual_seed(1)  # the same dropout mask for both
        logits = module(clips)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        assert seen == [channels_last]
        results[channels_last] = (logits.detach(), [p.grad for p in module.parameters() if p.grad is not None])
        if quantized:
            # Depthwise and 1x1 weights are both layouts at once; the stem's 3x3 over RGB is not,
            # and the activations follow its layout.
            weights = [
                p
                for p in module.net.parameters()
                if p.dim() == 4 and p.is_contiguous() != p.is_contiguous(memory_format=torch.channels_last)
            ]
            assert weights and all(w.is_contiguous(memory_format=torch.channels_last) == channels_last for w in weights)
            module.eval()
            int8[channels_last] = module.int8_net()(clips)
    (logits_last, grads_last), (logits_first, grads_first) = results[True], results[False]
    assert torch.allclose(logits_last, logits_first, atol=1e-5)
    assert len(grads_last) == len(grads_first) > 0
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-3) for a, b in zip(grads_last, grads_first))
    if quantized:  # converted from a contiguous copy: the very same int8 model
        assert torch.equal(int8[True], int8[False])


_RESIDENT_AFTER_FREE = """
import sys, torch
from vidaccel_train.allocator import keep_freed_memory
kept = keep_freed_memory()
block = torch.ones(64 * 2**20)  # 256 MB, touched
del block
with open("/proc/self/statm") as statm:
    resident_mb = int(statm.read().split()[1]) * 4096 / 2**20
print(kept, resident_mb)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_training_keeps_freed_activation_memory_unless_the_user_set_malloc_options():
    def resident_after_free(**env):
        result = subprocess.run(
            [sys.executable, "-c", _RESIDENT_AFTER_FREE],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        kept, resident_mb = result.stdout.split()
        return kept == "True", float(resident_mb)

    kept, kept_resident = resident_after_free()
    untouched, default_resident = resident_after_free(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=33554432")
    assert kept and not untouched
    assert kept_resident > default_resident + 200  # the 256 MB block stayed for reuse


def test_the_progress_bar_is_for_terminals_and_every_epoch_is_a_log_line_elsewhere():
    """A cluster job's console is a file: no bar there (EpochLog writes a line per epoch,
    checked in a real job in tests/test_scale_out.py); a terminal gets Rich's bar."""
    import os
    import sys

    from lightning.pytorch.callbacks import RichProgressBar

    from vidaccel_train.training.progress import format_duration, rich_progress_bar

    saved = sys.stdout
    master, replica = os.openpty()
    try:
        with open(os.devnull, "w") as sys.stdout:
            assert rich_progress_bar() is None
        with open(replica, "w") as sys.stdout:
            assert isinstance(rich_progress_bar(), RichProgressBar)
    finally:
        sys.stdout = saved
        os.close(master)
    assert [format_duration(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]
