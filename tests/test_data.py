import pytest
import torch
from hydra.utils import instantiate

from vidaccel_train.data import VideoDataModule
from vidaccel_train.errors import DatasetLayoutError

from support import TINY_RUN, TINY_SPEC, compose_config


@pytest.fixture
def datamodule(tmp_path, data_dir) -> VideoDataModule:
    cfg = compose_config(tmp_path, data_dir, TINY_RUN)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_are_normalised_clips_with_labels(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["video"].shape == (4, 3, 4, 32, 32)  # (B, C, T, H, W)
    assert batch["video"].dtype == torch.float32
    assert -3 < batch["video"].mean() < 3 and batch["video"].std() > 0.2
    assert set(batch["label"].tolist()) <= set(range(4))


def test_class_names_come_from_the_label_list(datamodule):
    assert datamodule.class_names == list(TINY_SPEC.classes)
    assert len(datamodule.datasets["train"]) == 4 * 3
    assert len(datamodule.datasets["test"]) == 4 * 2


def test_eval_clips_are_deterministic_and_train_clips_vary(datamodule):
    val = datamodule.datasets["val"]
    assert torch.equal(val[0]["video"], val[0]["video"])
    train = datamodule.datasets["train"]
    torch.manual_seed(0)
    draws = [train[0]["video"] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_clip_frames_follow_the_sampling_rate(datamodule):
    """Frames of a clip are sampling_rate/target_fps seconds apart: the motion between them shows."""
    clip = datamodule.datasets["val"][0]["video"]
    steps = (clip[:, 1:] - clip[:, :-1]).abs().mean(dim=(0, 2, 3))
    assert (steps > 0.05).all()


def test_wrong_num_classes_is_a_clear_error(tmp_path, data_dir):
    cfg = compose_config(tmp_path, data_dir, TINY_RUN)
    cfg.data.num_classes = 5
    dm = instantiate(cfg.data)
    dm.prepare_data()
    with pytest.raises(DatasetLayoutError, match="data.num_classes=4"):
        dm.setup("fit")


@pytest.mark.parametrize("make_root", [lambda p: p / "absent", lambda p: p])
def test_missing_or_empty_root_explains_layout_and_synthetic(tmp_path, data_dir, make_root):
    root = make_root(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    cfg = compose_config(tmp_path, data_dir, ["data=kinetics", f"data.root={root}"])
    dm = instantiate(cfg.data)
    with pytest.raises(DatasetLayoutError, match="data=synthetic") as err:
        dm.prepare_data()
    assert "<split>/<class name>" in str(err.value)


def test_train_order_and_augmentation_depend_only_on_seed_epoch_and_clip(datamodule):
    from vidaccel_train.data.clips import EpochShuffleSampler

    first, again, other = (
        EpochShuffleSampler(12, seed=5),
        EpochShuffleSampler(12, seed=5),
        EpochShuffleSampler(12, seed=5),
    )
    first.set_epoch(3), again.set_epoch(3), other.set_epoch(4)
    assert list(first) == list(again) != list(other)
    assert sorted(index for index, _, _ in first) == list(range(12))
    assert {epoch for _, _, epoch in first} == {3}  # each item carries its epoch (it picks the transform)
    train = datamodule.datasets["train"]
    item = next(iter(first))
    torch.manual_seed(123)
    one = train[item]["video"]
    torch.manual_seed(456)  # global RNG history must not matter
    assert torch.equal(one, train[item]["video"])
