"""Device handling checked without a GPU.

A GPU run breaks wherever code makes a tensor without naming a device: it lands on the CPU
beside CUDA weights. With PyTorch's default device set to ``meta``, such a tensor lands on
``meta`` instead and the first operation mixing it with the CPU model raises, so the CPU
catches what only a GPU run would otherwise show.
"""

import functools
import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidaccel_train.export.artifacts import export_artifacts
from vidaccel_train.export.callback import export_input
from vidaccel_train.export.inputs import ExportSettings
from vidaccel_train.models import create_model
from vidaccel_train.training import QuantState, VideoClassifier

from support import TINY_FIT, compose_config

CLIP = (3, 4, 32, 32)


def _module() -> VideoClassifier:
    return VideoClassifier(
        create_model("x3d_tiny", num_classes=4), functools.partial(torch.optim.SGD, lr=0.1), num_classes=4
    )


def _tensors(module: torch.nn.Module):
    """Parameters, buffers and tensors kept as plain attributes (which ``.to()`` would not move)."""
    yield from module.parameters()
    yield from module.buffers()
    for child in module.modules():
        yield from (v for v in vars(child).values() if isinstance(v, torch.Tensor))


def test_qat_and_ptq_make_every_tensor_where_the_weights_are():
    clips = torch.randn(2, *CLIP)
    qat, ptq = _module(), _module()
    with torch.device("meta"):
        qat.enter_quantization(QuantState("qat", CLIP))  # deploy form (BatchNorm folded), export, fake quantization
        qat.train()
        qat(clips).sum().backward()
        qat.freeze_observers()
        qat.eval()
        outputs = [qat(clips), qat._float_logits(clips), qat.int8_net()(clips)]
        ptq.enter_quantization(QuantState("ptq", CLIP))
        ptq.calibrate([{"video": clips}], 1)
        outputs.append(ptq.int8_net()(clips))
    assert all(out.device.type == "cpu" and out.shape == (2, 4) and torch.isfinite(out).all() for out in outputs)
    assert all(p.grad is not None for p in qat.net.parameters() if p.requires_grad)


def test_a_quantized_model_moves_whole_to_another_device():
    """A model trained on a GPU is tested and exported on the CPU: ``.to()`` must move all of it."""
    module = _module()
    module.enter_quantization(QuantState("qat", CLIP))
    module.calibrate([{"video": torch.randn(2, *CLIP)}], 1)
    int8 = module.int8_net()
    module.to("meta")
    int8.to("meta")
    assert {t.device.type for t in _tensors(module.net)} == {"meta"}
    assert {t.device.type for t in _tensors(int8)} == {"meta"}


def test_the_int8_conversion_is_reused_until_weights_or_ranges_may_change():
    """The test converts once and the export reuses it; training or loaded weights convert again."""
    module = _module()
    module.enter_quantization(QuantState("qat", CLIP))
    module.calibrate([{"video": torch.randn(2, *CLIP)}], 1)
    module.eval()
    tested = module.int8_net()
    module.eval()  # the export puts the tested model in eval mode again
    assert module.int8_net() is tested
    module.load_state_dict(module.state_dict())
    reloaded = module.int8_net()
    assert reloaded is not tested
    module.train()
    module.eval()
    assert module.int8_net() is not reloaded


@pytest.mark.slow
def test_export_runs_on_the_cpu_whatever_the_default_device(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    cfg = compose_config(run_dir, data_dir, TINY_FIT)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    module = _module()
    module.enter_quantization(QuantState("qat", CLIP))
    module.calibrate([{"video": torch.randn(2, *CLIP)}], 1)
    module.run_config = {"model": {"name": "x3d_tiny", "net": OmegaConf.to_container(cfg.model.net, resolve=True)}}
    with torch.device("meta"):
        inputs = export_input(module, datamodule)
        manifest = export_artifacts(inputs, tmp_path / "export", ExportSettings(threads=1, latency_repeats=1))
    assert {a.precision for a in manifest.artifacts} == {"fp32", "int8"}
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["input_shape"] == [1, *CLIP]
