"""Multi-view testing: which clips and crops make the views, and how they become one video
prediction, checked against hand-computed numbers."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from vidaccel_train.data.clips import aggregate_views
from vidaccel_train.data.transforms import SpatialCrops, build_transform, crop_offsets
from vidaccel_train.data.video_io import VideoInfo, probe, read_frames_at
from vidaccel_train.training import VideoClassifier

from support import TINY_RUN, compose_config
from support.video_corpus import sampling


def test_clips_spread_evenly_and_crops_span_the_long_side():
    spec = sampling(num_frames=4, sampling_rate=5, target_fps=10)  # 2 s per clip
    info = VideoInfo(duration_s=10.0, fps=10, width=64, height=48)
    assert spec.uniform_starts(info, 4) == [1.0, 3.0, 5.0, 7.0]  # slack 8 s in 4 equal parts
    assert spec.uniform_starts(info, 1) == [spec.centre_start(info)] == [4.0]
    assert crop_offsets(64, 48, 3) == [0, 8, 16]
    assert crop_offsets(64, 48, 1) == [8]
    with pytest.raises(ValueError, match="does not fit"):
        crop_offsets(40, 48, 3)

    video = tv_tensors.Video(torch.arange(2 * 1 * 4 * 6, dtype=torch.uint8).view(2, 1, 4, 6))
    crops = SpatialCrops(4, 3)(video)  # landscape: crops move along the width
    assert crops.shape == (3, 2, 1, 4, 4)
    assert torch.equal(crops[0], video[..., :, 0:4]) and torch.equal(crops[2], video[..., :, 2:6])
    portrait = SpatialCrops(2, 3)(tv_tensors.Video(video.transpose(-1, -2)[..., :4, :]))  # 4 high, 4 wide
    assert portrait.shape == (3, 2, 1, 2, 2)


def test_view_averaging_matches_a_hand_computed_case():
    """Two views lean to class 0, one is sure of class 1: the vote says 0, the averaged
    probabilities say 1, as the papers' protocol (mean of softmax) does."""
    logits = torch.tensor([[[2.0, 1.9, -5.0], [2.0, 1.9, -5.0], [-5.0, 5.0, -5.0]]])
    lean = torch.tensor([2.0, 1.9, -5.0]).softmax(0)
    sure = torch.tensor([-5.0, 5.0, -5.0]).softmax(0)
    expected = (2 * lean + sure) / 3
    assert torch.allclose(aggregate_views(logits)[0], expected)
    assert expected.argmax() == 1 and lean.argmax() == 0


class LookupNet(nn.Module):
    """Answers each view with the logits stored for it: the view's first value is its row."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.table[video.flatten(1)[:, 0].long()] + self.weight


def test_test_metrics_score_videos_clips_and_classes(tmp_path):
    # 4 videos x 2 views, 3 classes, in two batches. Labels 0 | 1, 0, 2.
    table = torch.tensor(
        [
            [3.0, 0.0, 1.0],
            [3.0, 1.0, 0.0],  # video 0: both views say 0 (right, and right at top-1 and top-3)
            [2.0, 1.9, -5.0],
            [-5.0, 5.0, -5.0],  # video 1: views say 0 and 1; average says 1 (right)
            [3.0, 0.0, 0.0],
            [3.0, 0.0, 0.0],  # video 2: both say 0 (right)
            [0.0, 3.0, 0.0],
            [0.0, 2.0, 1.0],  # video 3: both say 1 (wrong; label 2 is second or third)
        ]
    )
    videos = torch.arange(8.0).view(4, 2, 1, 1, 1, 1).expand(4, 2, 1, 1, 1, 2).contiguous()
    labels = torch.tensor([0, 1, 0, 2])
    # The first batch is right at top-1: top-1 and top-5 must still be kept apart afterwards.
    batches = DataLoader(
        [{"video": videos[:1], "label": labels[:1]}, {"video": videos[1:], "label": labels[1:]}], batch_size=None
    )
    module = VideoClassifier(LookupNet(table), torch.optim.SGD, num_classes=3)
    module.class_names = ["a", "b", "c"]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    metrics = trainer.test(module, dataloaders=batches, verbose=False)[0]
    assert metrics["test/clip_top1"] == pytest.approx(5 / 8)  # v0a, v0b, v1b, v2a, v2b
    assert metrics["test/top1"] == pytest.approx(3 / 4)
    assert metrics["test/mean_class_accuracy"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["test/top5"] == pytest.approx(1.0)  # top-3 of 3 classes
    rows = (tmp_path / "confusion_matrix_test.csv").read_text().splitlines()
    assert rows[1:] == ["a,2,0,0", "b,0,1,0", "c,0,1,0"]
    assert (tmp_path / "confusion_matrix_test.png").stat().st_size > 0


def test_an_unreadable_test_video_is_left_out_of_every_metric_and_counted(tmp_path):
    """A video the loader could not read (``valid`` False, zeros standing in for its views) must
    change no score: the metrics count each readable video once and say how many were left out."""
    table = torch.tensor([[3.0, 0.0], [3.0, 1.0], [0.0, 3.0], [1.0, 3.0]])  # video 0 says class 0, video 1 class 1
    videos = torch.arange(4.0).view(2, 2, 1, 1, 1, 1).expand(2, 2, 1, 1, 1, 2).contiguous()
    readable = {"video": videos, "label": torch.tensor([0, 1]), "valid": torch.tensor([True, True])}
    # The unreadable one between them: its zeros would score as class 0 against label -1.
    with_bad = {
        "video": torch.stack([videos[0], torch.zeros_like(videos[0]), videos[1]]),
        "label": torch.tensor([0, -1, 1]),
        "valid": torch.tensor([True, False, True]),
    }
    scores = []
    for batch in (readable, with_bad):
        module = VideoClassifier(LookupNet(table), torch.optim.SGD, num_classes=2)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
        scores.append(trainer.test(module, dataloaders=DataLoader([batch], batch_size=None), verbose=False)[0])
    assert scores[1]["test/videos_left_out"] == 1 and scores[0]["test/videos_left_out"] == 0
    for key in ("test/top1", "test/clip_top1", "test/mean_class_accuracy"):
        assert scores[1][key] == pytest.approx(scores[0][key]) == pytest.approx(1.0)
    assert module.test_logits["test"].shape[:2] == (2, 2)  # the export's references hold readable videos only


def test_test_items_hold_every_view_of_a_video_decoded_once(tmp_path, data_dir):
    cfg = compose_config(tmp_path, data_dir, [*TINY_RUN, "data.test_views={clips:2,crops:3}"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    item = datamodule.datasets["test"][0]
    assert item["video"].shape == (6, 3, 4, 32, 32)  # (clips x crops, C, T, H, W)

    dataset = datamodule.datasets["test"]
    path = dataset.samples[0][0]
    info = probe(path)
    centre_crop = build_transform(False, 32, 36, datamodule.clip.mean, datamodule.clip.std)
    for clip, start in enumerate(dataset.clip.uniform_starts(info, 2)):
        alone = centre_crop(tv_tensors.Video(read_frames_at(path, dataset.clip.timestamps(start))))
        assert torch.equal(item["video"][clip * 3 + 1], alone)  # the middle crop of that clip

    batch = next(iter(datamodule.test_dataloader()))
    assert batch["video"].shape[1:] == (6, 3, 4, 32, 32)
    assert len(batch["video"]) == max(1, datamodule.eval_batch_size // 6)


def test_training_items_hold_several_clips_each_augmented_apart(tmp_path, data_dir):
    cfg = compose_config(tmp_path, data_dir, [*TINY_RUN, "data.train_clips_per_video=2"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    # Every video, each with its own seed: random starts overlap, nest and come in either order.
    for index, seed in enumerate(range(1234, 1234 + len(dataset))):
        path = dataset.samples[index][0]
        info = probe(path)
        item = dataset[(index, seed)]
        assert item["video"].shape == (2, 3, 4, 32, 32) and item["label"] == dataset.samples[index][1]
        # The same seed, drawn in the same order, one clip at a time: both clips match.
        torch.manual_seed(seed)
        starts = [dataset.clip.random_start(info) for _ in range(2)]
        alone = [dataset.transform(tv_tensors.Video(read_frames_at(path, dataset.clip.timestamps(s)))) for s in starts]
        assert torch.equal(item["video"][0], alone[0]) and torch.equal(item["video"][1], alone[1])
        assert not torch.equal(alone[0], alone[1])

    # data.batch_size videos a batch (BatchNorm sees as many videos as with one clip), 2 clips each.
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["video"].shape == (8, 3, 4, 32, 32)
    assert len(set(batch["index"].tolist())) == 4
    assert batch["label"][0::2].tolist() == batch["label"][1::2].tolist()
    assert batch["index"][0::2].tolist() == batch["index"][1::2].tolist()
