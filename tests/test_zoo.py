import dataclasses
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorchvideo.models.accelerator.mobile_cpu.efficient_x3d import EfficientX3d

from vidaccel_train.errors import CheckpointError, ConfigError
from vidaccel_train.models import zoo
from vidaccel_train.models.zoo import ZOO, create_model

from support import compose_config


def _pytorchvideo_model(expansion: str, num_classes: int = 400) -> EfficientX3d:
    torch.manual_seed(1)
    model = EfficientX3d(num_classes=num_classes, expansion=expansion)
    # Non-trivial BatchNorm statistics, as a trained checkpoint has.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name, expansion", [("x3d_xs", "XS"), ("x3d_s", "S")])
def test_pytorchvideo_state_dict_loads_unchanged_and_gives_the_same_logits(tmp_path, name, expansion):
    reference = _pytorchvideo_model(expansion)
    path = tmp_path / f"efficient_x3d_{expansion.lower()}_original_form.pyth"
    torch.save(reference.state_dict(), path)
    ours = create_model(name, num_classes=400, checkpoint=str(path)).eval()
    clip = torch.randn(2, 3, ZOO[name].num_frames, 64, 64)
    with torch.no_grad():
        assert (ours(clip) - reference(clip)).abs().max() <= 1e-5


def test_a_new_label_set_gets_a_fresh_head_and_keeps_the_rest(tmp_path, caplog):
    path = tmp_path / "k400.pyth"
    torch.save(_pytorchvideo_model("XS").state_dict(), path)
    model = create_model("x3d_xs", num_classes=7, checkpoint=str(path))
    assert model.projection.model.out_features == 7
    assert "projection.model.weight" in caplog.text
    reference = torch.load(path)
    assert torch.equal(
        model.state_dict()["s3.pathway0_res1.layers.conv_1.kernel.conv.weight"],
        reference["s3.pathway0_res1.layers.conv_1.kernel.conv.weight"],
    )


def test_a_checkpoint_of_another_architecture_is_refused_with_key_names(tmp_path):
    path = tmp_path / "large.pyth"
    torch.save(_pytorchvideo_model("L").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected: .*s2\.pathway0_res3"):
        create_model("x3d_xs", checkpoint=str(path))


def test_unreadable_and_missing_checkpoints_name_the_file(tmp_path):
    broken = tmp_path / "broken.pyth"
    broken.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(CheckpointError, match="broken.pyth"):
        create_model("x3d_xs", checkpoint=str(broken))
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("x3d_xs", checkpoint=str(tmp_path / "absent.pyth"))


def test_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = _pytorchvideo_model("XS")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / ZOO["x3d_xs"].checkpoint_file)
    model = create_model("x3d_xs", pretrained=True).eval()
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert (model(clip) - reference(clip)).abs().max() <= 1e-5


def test_without_network_pretrained_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # A closed local port stands in for an unreachable server.
    entry = dataclasses.replace(ZOO["x3d_xs"], checkpoint_url="http://127.0.0.1:9/efficient_x3d_xs_original_form.pyth")
    monkeypatch.setitem(zoo.ZOO, "x3d_xs", entry)
    with pytest.raises(CheckpointError, match=r"hub/checkpoints/efficient_x3d_xs_original_form\.pyth"):
        create_model("x3d_xs", pretrained=True)
    with pytest.raises(CheckpointError, match="no published checkpoint for 'x3d_m'"):
        create_model("x3d_m", pretrained=True)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ConfigError, match="model.name=resnet50 is not in the zoo; available: x3d_l, x3d_m.*x3d_xs"):
        create_model("resnet50")


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = create_model("x3d_tiny", num_classes=3, freeze_backbone=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(zoo.HEAD_KEYS)


def test_model_configs_read_the_clip_contract_from_the_zoo(tmp_path, data_dir):
    """Each zoo entry's clip contract is what its config and the data config built on it run,
    read from the zoo (no copy in the YAML), and ``model.clip.<key>=`` changes it for a run."""
    from vidaccel_train.data.contract import ClipContract

    for name, entry in ZOO.items():
        cfg = compose_config(tmp_path, data_dir, [f"model={name}"])
        assert ClipContract.from_dict(OmegaConf.to_container(cfg.model.clip, resolve=True)) == entry.clip, name
        assert ClipContract.from_dict(OmegaConf.to_container(cfg.data, resolve=True)) == entry.clip, name
    changed = compose_config(tmp_path, data_dir, ["model=x3d_s", "model.clip.num_frames=8", "model.clip.target_fps=25"])
    assert (changed.data.num_frames, changed.data.target_fps, changed.data.sampling_rate) == (8, 25, 6)
    for path in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"):
        assert "num_frames:" not in path.read_text() or path.name == "_common.yaml", f"{path.name} copies the contract"


def test_custom_architecture_from_config(tmp_path, data_dir):
    cfg = compose_config(tmp_path, data_dir, ["model=custom"])
    model = instantiate(cfg.model.net)
    assert len(model.s4) == OmegaConf.select(cfg, "model.net.stages")[2]["depth"] == 5
    assert type(model.s2.pathway0_res0.layers.act_func_1).__name__ == "HardSwish"
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 4, 64, 64)).shape == (1, cfg.data.num_classes)


class _RunsCode:
    """An object whose unpickling runs a shell command, as a booby-trapped checkpoint carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_a_checkpoint_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path, data_dir):
    import subprocess
    import sys
    from pathlib import Path

    marker = tmp_path / "ran"
    path = tmp_path / "x3d_tiny_weights.pyth"
    torch.save(
        {"model_state": create_model("x3d_tiny", num_classes=4).state_dict(), "extra": _RunsCode(f"touch {marker}")},
        path,
    )
    with pytest.raises(CheckpointError, match="refusing .*x3d_tiny_weights.pyth: loading it would run code"):
        create_model("x3d_tiny", num_classes=4, checkpoint=str(path))
    assert not marker.exists()

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train",
            "experiment=smoke",
            f"model.checkpoint={path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.data_dir={data_dir}",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and not marker.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "refusing" in errors[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3},  # someone's Lightning module
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},  # a DDP save
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # a bare DDP state_dict
        lambda sd: {"model_state": sd, "epoch": 7},  # PySlowFast
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": {f"model.module._orig_mod.{k}": v for k, v in sd.items()}},  # nested wrappers
    ],
    ids=["lightning", "ddp_lightning", "ddp", "pyslowfast", "model", "nested"],
)
def test_the_wrappings_checkpoints_come_in_load_the_same_weights(tmp_path, caplog, wrap):
    torch.manual_seed(3)
    source = create_model("x3d_tiny", num_classes=4).eval()
    path = tmp_path / "wrapped.ckpt"
    torch.save(wrap(source.state_dict()), path)
    loaded = create_model("x3d_tiny", num_classes=4, checkpoint=str(path)).eval()
    clip = torch.randn(1, 3, 4, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(clip), source(clip))


def test_a_file_without_weights_says_what_it_found(tmp_path):
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match=r"notes.pt holds no state_dict: found \['config', 'epoch'\]"):
        create_model("x3d_tiny", checkpoint=str(path))
