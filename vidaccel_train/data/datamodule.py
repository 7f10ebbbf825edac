"""LightningDataModule for clip classification on Kinetics-style data, generated or real."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vidaccel_train.data.clips import BadFileLog, ClipDataset, ClipSpec, EpochShuffleSampler
from vidaccel_train.data.layouts import DatasetLayoutError, index_class_folders
from vidaccel_train.data.synthetic import SyntheticSpec, dataset_dir, generate_dataset
from vidaccel_train.data.transforms import KINETICS_MEAN, KINETICS_STD, build_transform

log = logging.getLogger(__name__)


class VideoDataModule(L.LightningDataModule):
    """Clips from ``root`` in the class-folder layout; with ``synthetic`` set, the dataset is
    generated under ``root`` first (once, cached by its parameters)."""

    def __init__(
        self,
        root: str,
        num_classes: int,
        num_frames: int,
        sampling_rate: int,
        crop_size: int,
        train_short_side: Sequence[int],
        eval_short_side: int,
        target_fps: float = 30.0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        hflip: bool = True,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        splits: dict[str, str] | None = None,
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
        bad_files_report: str | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.num_classes = num_classes
        self.clip = ClipSpec(num_frames, sampling_rate, target_fps)
        self.crop_size = crop_size
        self.train_short_side = tuple(train_short_side)
        self.eval_short_side = eval_short_side
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.hflip = hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.splits = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        self.synthetic = SyntheticSpec(**_plain(synthetic)) if synthetic else None
        self.seed = seed or 0
        # Unreadable videos are skipped and named here (the run directory by default).
        self.bad_files = BadFileLog(bad_files_report) if bad_files_report else None
        self.class_names: list[str] | None = None
        self.datasets: dict[str, ClipDataset] = {}

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one model input."""
        return (3, self.clip.num_frames, self.crop_size, self.crop_size)

    @property
    def dataset_dir(self) -> Path:
        if self.synthetic is None:
            return self.root
        return dataset_dir(self.root, self.synthetic)

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            generate_dataset(self.root, self.synthetic)
        elif not self.root.is_dir() or not any(self.root.iterdir()):
            raise DatasetLayoutError(
                f"data.root={self.root} is missing or empty. Expected <root>/<split>/<class name>/<clip>.mp4 "
                "with splits train/val/test. To try the pipeline without Kinetics, run with data=synthetic."
            )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for role, split in self.splits.items():
            samples, names = index_class_folders(self.dataset_dir, split, self.class_names)
            self.class_names = names
            train = role == "train"
            transform = build_transform(
                train,
                self.crop_size,
                self.train_short_side if train else self.eval_short_side,
                self.mean,
                self.std,
                self.hflip,
            )
            self.datasets[role] = ClipDataset(samples, self.clip, train, transform, self.bad_files)
        if len(self.class_names) != self.num_classes:
            raise DatasetLayoutError(
                f"data.num_classes={self.num_classes} but {self.dataset_dir} has {len(self.class_names)} classes; "
                f"set data.num_classes={len(self.class_names)}"
            )

    def teardown(self, stage: str) -> None:
        if self.bad_files is not None:
            bad = self.bad_files.compact()
            if bad:
                log.warning("%d unreadable videos were skipped; see %s", len(bad), self.bad_files.path)

    def _loader(self, role: str, batch_size: int) -> DataLoader:
        dataset = self.datasets[role]
        train = role == "train"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if train else None,
            drop_last=train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)


def _plain(config: Any) -> dict:
    """Hydra hands over a DictConfig; the spec wants plain, hashable values."""
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    if "classes" in config:
        config["classes"] = tuple(config["classes"])
    return config
