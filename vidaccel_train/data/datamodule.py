"""LightningDataModule for clip classification on Kinetics-style data, generated or real."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vidaccel_train.data.clips import BadFileLog, ClipContract, ClipDataset, EpochShuffleSampler, collate_clips
from vidaccel_train.data.layouts import EXPECTED_LAYOUTS, index_split
from vidaccel_train.data.synthetic import SyntheticSpec, dataset_dir, generate_dataset
from vidaccel_train.data.transforms import KINETICS_MEAN, KINETICS_STD, build_transform
from vidaccel_train.data.video_io import check_display_aspect, probe
from vidaccel_train.errors import ConfigError, DatasetLayoutError, VideoDecodeError, check_count, check_number

log = logging.getLogger(__name__)


# Workers that ``num_workers=auto`` starts at most: past this, decoding is seldom what waits.
MAX_AUTO_WORKERS = 8


def auto_workers() -> int:
    """Loader workers for ``num_workers=auto``: the CPUs this process may run on (its affinity,
    as PyTorch's loader counts them), at most :data:`MAX_AUTO_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cpus))


class VideoDataModule(L.LightningDataModule):
    """Clips from ``root`` in any layout of :mod:`~vidaccel_train.data.layouts` (``auto``
    detects it); with ``synthetic`` set, the dataset is generated under ``root`` first (once,
    cached by its parameters) and read by the same code.

    Training takes ``train_clips_per_video`` random clips per video, each augmented on its own
    and decoded in one pass over the file; a batch holds ``batch_size`` videos, so
    ``batch_size * train_clips_per_video`` clips (repeated augmentation: BatchNorm still sees
    ``batch_size`` different videos; with fewer, its batch statistics come from a few correlated
    clips and training stalls); validation the centre clip and centre crop; testing ``test_views.clips`` clips spread
    over each video times ``test_views.crops`` crops, whose predictions the model averages per
    video. ``decoder_threads`` are FFmpeg's threads per decode (0: FFmpeg chooses); one is
    fastest when loader workers already fill the cores.

    ``low_res_epochs`` first epochs train on clips scaled by ``low_res_scale`` (crop and short
    sides alike): progressive resizing, as X3D's multigrid training, for several times the
    steps per second while the network learns coarse motion; later epochs, validation, testing
    and export use the full ``crop_size``.

    ``num_workers``: loader worker processes; ``auto`` (default) takes one per CPU this process
    may use, at most :data:`MAX_AUTO_WORKERS`.

    ``display_aspect``: ``square`` (default) resamples anamorphic videos (non-square stored
    pixels, such as Kinetics copies resized to 340x256 that keep 16:9) to square pixels as a
    player shows them; ``stored`` feeds the stored pixels, as PySlowFast and MMAction2 trained
    the zoo weights. Videos are always read upright (display matrix) and timed from their first frame.

    Raises:
        ConfigError: a count that is not a positive integer (``batch_size``, ``num_frames``,
            ``sampling_rate``, ``crop_size``, ``eval_short_side``, ``num_classes``,
            ``train_clips_per_video``, ``test_views``), a ``num_workers`` neither ``auto`` nor 0 or more,
            ``low_res_epochs`` or ``decoder_threads``, ``target_fps`` not above 0,
            ``low_res_scale`` outside (0, 1], ``crop_size`` above ``eval_short_side``, an unknown
            ``display_aspect``, or ``synthetic`` settings the generator cannot make. The
            message names the setting as the config does (``data.batch_size``).
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        num_frames: int,
        sampling_rate: int,
        crop_size: int,
        train_short_side: Sequence[int],
        eval_short_side: int,
        target_fps: float = ClipContract.target_fps,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool = True,
        persistent_workers: bool = True,
        hflip: bool = True,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        splits: dict[str, str] | None = None,
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
        bad_files_report: str | None = None,
        layout: str = "auto",
        test_views: dict[str, int] | None = None,
        train_clips_per_video: int = 1,
        decoder_threads: int = 1,
        low_res_epochs: int = 0,
        low_res_scale: float = 0.6,
        display_aspect: str = "square",
    ):
        super().__init__()
        views = {"clips": 1, "crops": 1, **(test_views or {})}
        counts = dict(
            batch_size=batch_size,
            num_frames=num_frames,
            sampling_rate=sampling_rate,
            crop_size=crop_size,
            eval_short_side=eval_short_side,
            num_classes=num_classes,
            train_clips_per_video=train_clips_per_video,
            **{f"test_views.{k}": v for k, v in views.items()},
        )
        for name, value in counts.items():
            check_count(f"data.{name}", value)
        if num_workers == "auto":
            num_workers = auto_workers()
        check_count("data.num_workers", num_workers, 0, "0 or more, or auto")
        check_count("data.low_res_epochs", low_res_epochs, 0)
        check_count("data.decoder_threads", decoder_threads, 0, "0 (FFmpeg chooses) or more")
        check_number("data.target_fps", target_fps)
        check_number("data.low_res_scale", low_res_scale, 0, 1)
        if crop_size > eval_short_side:
            raise ConfigError(
                f"data.crop_size={crop_size} is larger than data.eval_short_side={eval_short_side}: "
                "lower model.clip.crop_size or raise model.clip.eval_short_side"
            )
        self.root = Path(root)
        self.num_classes = num_classes
        # The clip contract the config gave field by field (model.clip, read by the data group).
        self.clip = ClipContract(
            num_frames=num_frames,
            sampling_rate=sampling_rate,
            crop_size=crop_size,
            train_short_side=train_short_side,
            eval_short_side=eval_short_side,
            target_fps=target_fps,
            mean=mean,
            std=std,
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.hflip = hflip
        self.splits = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        try:
            self.synthetic = SyntheticSpec(**_plain(synthetic)) if synthetic else None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data.synthetic: {err}") from None
        self.layout = layout
        self.test_clips, self.test_crops = int(views["clips"]), int(views["crops"])
        self.train_clips = train_clips_per_video
        self.decoder_threads = decoder_threads
        self.low_res_epochs = low_res_epochs
        self.low_res_scale = low_res_scale
        self.display_aspect = check_display_aspect(display_aspect)
        self.seed = seed or 0
        # Unreadable videos are skipped and named here (the run directory by default).
        self.bad_files = BadFileLog(bad_files_report) if bad_files_report else None
        self.class_names: list[str] | None = None
        self.datasets: dict[str, ClipDataset] = {}

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one model input."""
        return self.clip.input_shape[1:]

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
                f"data.root={self.root} is missing or empty; {EXPECTED_LAYOUTS}, with splits "
                f"{'/'.join(self.splits.values())}. To try the pipeline without Kinetics, run with data=synthetic."
            )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for role, split in self.splits.items():
            index = index_split(self.dataset_dir, split, self.layout, self.class_names)
            self.class_names = index.class_names
            if index.missing:
                log.warning(
                    "%d clips of split '%s' are listed but missing (named in %s)",
                    len(index.missing),
                    split,
                    self.bad_files.path if self.bad_files else "no report: data.bad_files_report is unset",
                )
                if self.bad_files is not None:
                    for path, reason in index.missing.items():
                        self.bad_files.record(path, reason, announce=False)
            train, test = role == "train", role == "test"
            transform = build_transform(
                train,
                self.clip.crop_size,
                self.clip.train_short_side if train else self.clip.eval_short_side,
                self.clip.mean,
                self.clip.std,
                self.hflip,
                crops=self.test_crops if test else None,
            )
            early = {}
            if train:
                self._check_clip_fits(index.samples)
                if self.low_res_epochs:
                    early = {"early_transform": self.low_res_transform(), "early_epochs": self.low_res_epochs}
            clips_per_video = {
                "train": self.train_clips if self.train_clips > 1 else None,
                "test": self.test_clips,
            }.get(role)
            self.datasets[role] = ClipDataset(
                index.samples,
                self.clip,
                train,
                transform,
                self.bad_files,
                clips_per_video=clips_per_video,
                decoder_threads=self.decoder_threads,
                display_aspect=self.display_aspect,
                **early,
            )
        if len(self.class_names) != self.num_classes:
            shown = ", ".join(self.class_names[:12]) + (
                f", ... ({len(self.class_names) - 12} more)" if len(self.class_names) > 12 else ""
            )
            raise DatasetLayoutError(
                f"data.num_classes={self.num_classes} but {self.dataset_dir} has {len(self.class_names)} classes "
                f"({shown}); set data.num_classes={len(self.class_names)}, or remove the folders that are not classes"
            )

    def low_res_transform(self):
        """The training transform of the low-resolution epochs: crop and scale range shrunk alike."""

        def scaled(pixels: int) -> int:
            return max(8, round(pixels * self.low_res_scale))

        crop = scaled(self.clip.crop_size)
        short_sides = [max(crop, scaled(side)) for side in self.clip.train_short_side]
        return build_transform(True, crop, short_sides, self.clip.mean, self.clip.std, self.hflip)

    def _check_clip_fits(self, samples, probes: int = 8) -> None:
        """A clip longer than the videos themselves is a config mistake: say so before training
        on frozen last frames. Probes a few videos spread over the split."""
        durations = []
        for path, _ in samples[:: max(1, len(samples) // probes)][:probes]:
            try:
                durations.append(probe(path).duration_s)
            except VideoDecodeError:
                continue  # reported when the clip is read
        durations = sorted(d for d in durations if math.isfinite(d))
        if durations and durations[len(durations) // 2] < self.clip.span_s:
            raise ConfigError(
                f"a clip of {self.clip.num_frames} frames every {self.clip.sampling_rate} at {self.clip.target_fps:g} fps "
                f"spans {self.clip.span_s:.2f} s but the videos of {self.dataset_dir} last about "
                f"{durations[len(durations) // 2]:.2f} s: lower model.clip.num_frames or model.clip.sampling_rate"
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
            collate_fn=collate_clips if train and dataset.clips_per_video else None,
            sampler=EpochShuffleSampler(len(dataset), self.seed, shuffle=train),
            drop_last=train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Batches of ``batch_size`` videos, ``train_clips_per_video`` clips each."""
        return self._loader("train", self.batch_size)

    def end_low_res_epochs_at(self, epoch: int) -> None:
        """Train at full size from ``epoch`` on, if the low-resolution epochs would last longer
        (QAT's quantized graph takes full-size clips). A training set already built takes the
        new count too; call it before the training loader is made (its workers copy the set)."""
        if not 0 <= epoch < self.low_res_epochs:
            return
        log.info(
            "data.low_res_epochs=%d: the low-resolution epochs end at epoch %d, where QAT starts",
            self.low_res_epochs,
            epoch,
        )
        self.low_res_epochs = epoch
        if "train" in self.datasets:
            self.datasets["train"].early_epochs = min(self.datasets["train"].early_epochs, epoch)

    def calibration_dataloader(self) -> DataLoader:
        """Training batches at the full clip size (past any low-resolution epochs), for
        post-training calibration of a graph exported at that size."""
        loader = self.train_dataloader()
        loader.sampler.set_epoch(self.low_res_epochs)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    @property
    def test_views(self) -> int:
        return self.test_clips * self.test_crops

    def test_dataloader(self) -> DataLoader:
        """Batches of whole videos, each ``(views, C, T, H, W)``: about ``eval_batch_size`` clips."""
        return self._loader("test", max(1, self.eval_batch_size // self.test_views))


def _plain(config: Any) -> dict:
    """Hydra hands over a DictConfig; the spec wants plain, hashable values."""
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    if "classes" in config:
        config["classes"] = tuple(config["classes"])
    return config
