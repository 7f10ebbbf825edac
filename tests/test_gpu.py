"""Every path on a CUDA device, through the CLI (``-m gpu``; skipped without CUDA):

    python -m pytest -m gpu tests/test_gpu.py

What runs on the GPU: fp32 and bf16-mixed fits, QAT switched on mid-run and from epoch 0, PTQ,
DDP on one GPU, the default export (int8) after GPU training, resume mid-QAT; each with two
loader workers and pinned memory, as real runs have them, and each checked to have stepped on
CUDA (``support.callbacks.RecordDevices``). Then what a GPU checkpoint must do elsewhere: the same
logits on the CPU as on the GPU (within the tolerances below), a test and a resume on the CPU,
and the export in a process that sees no GPU.

Dry run: with ``VIDACCEL_GPU_DRY_RUN=1`` and no CUDA, every test runs on the CPU up to the
checks that need CUDA (those alone are left out), so the default suite catches a test that
would fail on its first GPU contact (``tests/test_scripts.py`` runs it through
``scripts/device_check.sh --dry-run``).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidaccel_train.training import VideoClassifier
from vidaccel_train.training.module import net_builder

from support import TINY_FIT, run_cli

ON_GPU = torch.cuda.is_available()
DRY_RUN = not ON_GPU and os.environ.get("VIDACCEL_GPU_DRY_RUN") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (ON_GPU or DRY_RUN), reason="needs a CUDA device (VIDACCEL_GPU_DRY_RUN=1: CPU dry run)"),
]
DEVICE = "cuda" if ON_GPU else "cpu"
# trainer=gpu is bf16-mixed on one CUDA device; the dry run checks the tests, not bf16 on the CPU
# (another code path, and slow there): fp32.
TRAINER = ["trainer=gpu"] if ON_GPU else ["trainer=cpu"]
ACCELERATOR = "gpu" if ON_GPU else "cpu"

# Two workers and pinned memory (data.pin_memory is on by default and applies where CUDA is):
# the loader as every real GPU run has it.
BASE = [
    *(o for o in TINY_FIT if not o.startswith("data.num_workers")),
    "optim=adamw",
    "data.num_workers=2",
    "data.pin_memory=true",
    "test_ckpt=last",
]
GPU = [*BASE, *TRAINER]
CPU = [*BASE, "trainer=cpu"]
QAT = ["quant=qat", "quant.start_epoch=1", "quant.freeze_observer_epoch=2", "trainer.max_epochs=3"]
# The aarch64 check is the CPU suite's (tests/test_targets.py): the GPU machine has no emulator.
EXPORT = [
    "callbacks.export.enabled=true",
    "callbacks.export.latency_repeats=2",
    "callbacks.export.latency_rounds=1",
    "callbacks.export.targets=[]",
]

# GPU and CPU logits of one checkpoint: cuDNN sums in another order and runs its convolutions in
# TF32 by default (PyTorch's default on Ampere and later: a 10-bit mantissa), so the float
# network moves by a small part of the logits' spread; the fake-quantized network may also move
# an activation across a rounding edge, one quantization step, which a few layers on is a bit more.
FLOAT_TOLERANCE = 0.01  # of the mean spread (max - min) of a clip's logits
QAT_TOLERANCE = 0.05


def _record(run_dir, overrides, name=None):
    """``overrides`` with a record of where each epoch's steps ran, in ``run_dir``/devices.jsonl."""
    return [
        *overrides,
        "+callbacks.devices._target_=support.callbacks.RecordDevices",
        f"+callbacks.devices.path={run_dir / (name or 'devices.jsonl')}",
    ]


def _fit(run_dir, data_dir, overrides, base=GPU):
    result = run_cli(run_dir, data_dir, _record(run_dir, [*base, *overrides]))
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def _epochs(run_dir, name="devices.jsonl"):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _assert_stepped_on(run_dir, device, name="devices.jsonl", workers=2):
    """Every epoch's batches and weights were on ``device`` (CUDA on a GPU, else the dry run's
    CPU), fed by ``workers`` loader workers with pinned memory wherever CUDA is."""
    epochs = _epochs(run_dir, name)
    assert epochs, "no training step was recorded"
    for epoch in epochs:
        assert epoch["batch_device"].split(":")[0] == device, epoch
        assert epoch["weights_device"].split(":")[0] == device, epoch
        assert epoch["num_workers"] == workers, epoch
        assert epoch["pin_memory"] is (ON_GPU and device == "cuda"), epoch


def _checkpoint_module(path) -> VideoClassifier:
    """The module a checkpoint holds, rebuilt from its own run config, on the CPU in eval mode."""
    config = torch.load(path, map_location="cpu", weights_only=True)["run_config"]
    module = VideoClassifier.load_from_checkpoint(
        path, net=net_builder(config)(), optimizer=torch.optim.SGD, map_location="cpu", weights_only=True
    )
    return module.eval()


def _test_clips(run_dir, count: int = 12) -> torch.Tensor:
    """The run's first ``count`` test clips as the test feeds them (real clips of the generated videos)."""
    config = OmegaConf.create(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["run_config"])
    datamodule = instantiate({**OmegaConf.to_container(config.data, resolve=True), "num_workers": 0})
    datamodule.prepare_data()
    datamodule.setup("test")
    clips = []
    for batch in datamodule.test_dataloader():
        clips.extend(batch["video"].flatten(0, 1))  # (videos, views, C, T, H, W) -> clips
        if len(clips) >= count:
            break
    return torch.stack(clips[:count])


def _assert_same_logits(run_dir, tolerance):
    """The checkpoint's logits on ``DEVICE`` against the CPU's, for the run's test clips: every
    logit within ``tolerance`` of the spread, and the same top-1 wherever the CPU's margin
    exceeds twice that (closer calls may flip under any change of summation order)."""
    module = _checkpoint_module(run_dir / "checkpoints" / "last.ckpt")
    clips = _test_clips(run_dir)
    with torch.no_grad():
        cpu = module(clips)
        other = module.to(DEVICE)(clips.to(DEVICE)).cpu()
    spread = (cpu.amax(-1) - cpu.amin(-1)).mean()
    assert torch.isfinite(other).all()
    assert (other - cpu).abs().max() <= tolerance * spread, ((other - cpu).abs().max(), spread)
    top2 = cpu.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance * spread
    assert (other.argmax(-1) == cpu.argmax(-1))[clear].all()
    return len(clips)


# ------------------------------------------------------------------------------- the fits


DDP = [*BASE, "trainer=ddp", f"trainer.accelerator={ACCELERATOR}", "trainer.devices=1"]


@pytest.mark.parametrize(
    "name, overrides, base",
    [
        ("fp32", ["trainer.precision=32-true", "trainer.max_epochs=2"], GPU),
        ("bf16_ptq_export", ["quant=ptq", "quant.calibration_batches=2", "trainer.max_epochs=2", *EXPORT], GPU),
        ("qat_epoch0", [*QAT, "quant.start_epoch=0", "model.checkpoint=START_WEIGHTS"], GPU),
        ("ddp_one_gpu_qat_mid_run", QAT, DDP),
    ],
)
def test_a_gpu_run_fits_on_cuda_tests_and_exports(tmp_path, data_dir, start_weights, name, overrides, base):
    overrides = [o.replace("START_WEIGHTS", str(start_weights)) for o in overrides]
    run_dir = _fit(tmp_path, data_dir, overrides, base)
    _assert_stepped_on(run_dir, DEVICE)
    metrics = _metrics(run_dir)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if name != "fp32":
        assert {"test/top1", "test_fp32/top1"} <= set(metrics)  # the int8 model was tested
        assert any(epoch["quantized"] for epoch in _epochs(run_dir)) is (name != "bf16_ptq_export")
    if name == "fp32":
        assert {e["precision"] for e in _epochs(run_dir)} == {"32-true"}
        # The float network of a GPU checkpoint gives the CPU's logits.
        assert _assert_same_logits(run_dir, FLOAT_TOLERANCE) == 12
    if name == "bf16_ptq_export" and ON_GPU:
        assert {e["precision"] for e in _epochs(run_dir)} == {"bf16-mixed"}  # trainer=gpu's default
    if "export" in name:
        (artifact,) = json.loads((run_dir / "export" / "manifest.json").read_text())["artifacts"]
        assert artifact["precision"] == "int8" and artifact["agreement"] >= 0.9  # the default: int8 only


# ------------------------------------------------------------------------------- one QAT run, everywhere


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, data_dir):
    """A GPU fit: fp32 for an epoch, then QAT (observers frozen for the last), tested on its last
    checkpoint; the cut runs below differ from it only in being cut."""
    return _fit(tmp_path_factory.mktemp("qat_run"), data_dir, QAT)


def test_qat_steps_ran_on_cuda(qat_run):
    _assert_stepped_on(qat_run, DEVICE)
    assert [e["quantized"] for e in _epochs(qat_run)] == [False, True, True]
    assert {"test/top1", "test_fp32/top1"} <= set(_metrics(qat_run))


def test_a_qat_checkpoint_gives_the_same_logits_on_the_gpu_and_the_cpu(qat_run):
    assert _assert_same_logits(qat_run, QAT_TOLERANCE) == 12


def test_a_gpu_checkpoint_tests_on_the_cpu_as_on_the_gpu(qat_run, tmp_path, data_dir):
    """``train=false ckpt_path=<GPU checkpoint> trainer=cpu``: the test the GPU run made, on the CPU."""
    checkpoint = qat_run / "checkpoints" / "last.ckpt"
    result = run_cli(tmp_path, data_dir, [*CPU, *QAT, "train=false", f"ckpt_path={checkpoint}"])
    assert result.returncode == 0, result.stderr[-4000:]
    on_gpu, on_cpu = _metrics(qat_run), _metrics(tmp_path)
    # 8 test videos: the int8 and fp32 accuracies may differ by one borderline video, the losses
    # by the GPU's summation order and TF32 (QAT_TOLERANCE).
    for key in ("test/top1", "test_fp32/top1"):
        assert abs(on_cpu[key] - on_gpu[key]) <= 1 / 8 + 1e-6, key
    for key in ("test/loss", "test_fp32/loss"):
        assert on_cpu[key] == pytest.approx(on_gpu[key], rel=QAT_TOLERANCE), key


def test_a_gpu_checkpoint_exports_where_no_gpu_is_seen(qat_run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train.export",
            f"ckpt_path={qat_run / 'checkpoints' / 'last.ckpt'}",
            f"out_dir={tmp_path / 'exported'}",
            "callbacks.export.latency_repeats=2",
            "callbacks.export.latency_rounds=1",
            "callbacks.export.targets=[]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((tmp_path / "exported" / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    assert artifact["precision"] == "int8" and artifact["agreement"] >= 0.9  # the default: int8 only
    # The program's accuracy is the int8 test's on the GPU run (same checkpoint, same test clips).
    assert artifact["top1"] == pytest.approx(_metrics(qat_run)["test/top1"], abs=1 / 8 + 1e-6)


@pytest.fixture(scope="module")
def cut_qat_run(tmp_path_factory, data_dir):
    """The QAT run stopped cleanly after its first QAT epoch (epoch 1), on the GPU."""
    run_dir = tmp_path_factory.mktemp("cut_qat_run")
    result = run_cli(
        run_dir,
        data_dir,
        _record(
            run_dir,
            [*GPU, *QAT, "+callbacks.stop._target_=support.callbacks.StopAfterEpoch", "+callbacks.stop.epoch=1"],
        )
        + ["test=false"],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


def test_a_gpu_run_resumes_mid_qat_on_the_gpu_to_the_unstopped_run(qat_run, cut_qat_run, tmp_path, data_dir):
    stopped = tmp_path / "run"
    shutil.copytree(cut_qat_run, stopped)
    resumed = run_cli(stopped, data_dir, _record(stopped, [*GPU, *QAT, "ckpt_path=last"], "resumed.jsonl"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _assert_stepped_on(stopped, DEVICE, "resumed.jsonl")
    assert [e["epoch"] for e in _epochs(stopped, "resumed.jsonl")] == [2]
    expected, got = _metrics(qat_run), _metrics(stopped)
    # cuDNN runs deterministic kernels (trainer.deterministic=warn): the same numbers, up to the
    # last digits where a kernel has no deterministic variant.
    for key in ("test/top1", "test/loss", "test_fp32/loss", "val/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key


def test_a_gpu_run_resumes_mid_qat_on_the_cpu(qat_run, cut_qat_run, tmp_path, data_dir):
    """The cut GPU run's last epoch trained on the CPU: the quantized graph, its ranges, the
    optimizer and the epoch count come back from the GPU checkpoint."""
    stopped = tmp_path / "run"
    shutil.copytree(cut_qat_run, stopped)
    resumed = run_cli(stopped, data_dir, _record(stopped, [*CPU, *QAT, "ckpt_path=last"], "resumed.jsonl"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    (epoch,) = _epochs(stopped, "resumed.jsonl")
    assert epoch["epoch"] == 2 and epoch["quantized"] and epoch["batch_device"] == "cpu"
    checkpoint = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    unstopped = torch.load(qat_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == unstopped["global_step"] and checkpoint["epoch"] == unstopped["epoch"]
    got, expected = _metrics(stopped), _metrics(qat_run)
    assert {"test/top1", "test_fp32/top1"} <= set(got)
    # One epoch on another device (and in fp32 where the GPU ran bf16): close, not equal.
    assert got["val/loss"] == pytest.approx(expected["val/loss"], rel=0.25)
