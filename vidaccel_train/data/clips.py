"""The clip contract and clip sampling: what a model takes, and which timestamps of a video make up one input."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision import tv_tensors

from vidaccel_train.data.contract import ClipContract
from vidaccel_train.data.video_io import check_display_aspect, read_clip
from vidaccel_train.errors import VideoDecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Views:
    """A video's test views: ``clips`` clips spread evenly over it times ``crops`` crops along
    its long side, as ``test``, the export's verification and ``predict`` take them."""

    clips: int = 1
    crops: int = 1

    def __str__(self) -> str:
        return f"{self.clips} clips x {self.crops} crops"


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochShuffleSampler(Sampler):
    """Shuffles by ``(seed, epoch)``, shards across DDP ranks, and hands each index its own
    augmentation seed.

    Clip choice and augmentation then depend only on the seed, the epoch and the index, not on
    worker count or RNG history, so a run resumed from a checkpoint sees the very clips an
    unstopped run would; :meth:`resume_after` skips what a run cut off mid-epoch had already
    trained on. Under DDP each rank takes every ``world``-th item of the same order, so every
    clip is used once per epoch across ranks; in training the order is cut to a multiple of
    the world size so ranks step together. Lightning calls ``set_epoch``.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size = size
        self.seed = seed or 0
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_after(self, items: int) -> None:
        """Leave out this rank's first ``items`` items of the next pass (one pass only)."""
        self._skip = items

    def _shard_size(self, rank: int, world: int) -> int:
        if self.shuffle:
            return self.size // world
        return len(range(rank, self.size, world))

    def __len__(self) -> int:
        return self._shard_size(*_rank_and_world())

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist() if self.shuffle else list(range(self.size))
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator).tolist()
        rank, world = _rank_and_world()
        items = [(index, seed, self.epoch) for index, seed in zip(order, seeds)]
        mine = items[rank::world][: self._shard_size(rank, world)]
        skip, self._skip = self._skip, 0
        return iter(mine[skip:])


class BadFileLog:
    """Where undecodable files are reported: one line each, ``<path>\t<reason>``.

    Workers append (each file once per process); :meth:`compact` leaves one line per file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._seen: set[str] = set()

    def record(self, file: str, reason: str, announce: bool = True) -> None:
        if file in self._seen:
            return
        self._seen.add(file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as stream:  # one short write per line: appends do not interleave
            stream.write(f"{file}\t{reason.replace(chr(10), ' ')}\n")
        if announce:
            log.warning("skipping unreadable video %s (%s)", file, reason)

    def compact(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        entries = dict(line.split("\t", 1) for line in self.path.read_text().splitlines() if "\t" in line)
        self.path.write_text("".join(f"{file}\t{reason}\n" for file, reason in sorted(entries.items())))
        return entries


class ClipDataset(Dataset):
    """Random clips in training, each with its own augmentation; in evaluation clips spread
    evenly over the video (one: the centre clip).

    Without ``clips_per_video`` an item's ``video`` is one clip ``(C, T, H, W)``. With it, the
    video's clips are decoded in one pass over the file (one open, one seek): in training an
    item is ``(clips, C, T, H, W)``; in evaluation the transform must return ``(crops, C, T, H,
    W)`` views of a clip and an item is all views, ``(clips * crops, C, T, H, W)``.

    Items are indices, or ``(index, seed, epoch)`` from :class:`EpochShuffleSampler`: the seed
    makes the random clip and augmentation of that item reproducible, and the epoch picks the
    transform (``early_transform`` before ``early_epochs``, ``transform`` from then on). A file
    that cannot be decoded is reported to ``bad_files``; in training the next file in the list
    stands in for it, so a run goes on (``max_consecutive_failures`` bad files in a row mean the
    split itself is broken); in evaluation nothing stands in: its item has ``valid`` False and
    zero frames, and the metrics leave it out, so each readable video counts once. Every item
    has ``video``, ``label``, ``index`` and ``valid``. ``display_aspect``: see
    :func:`~vidaccel_train.data.video_io.read_clip`.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        clip: ClipContract,
        train: bool,
        transform,
        bad_files: BadFileLog | None = None,
        max_consecutive_failures: int = 16,
        clips_per_video: int | None = None,
        decoder_threads: int = 0,
        early_transform=None,
        early_epochs: int = 0,
        display_aspect: str = "square",
    ):
        self.samples = list(samples)
        self.display_aspect = check_display_aspect(display_aspect)
        self.clip = clip
        self.train = train
        self.clips_per_video = clips_per_video
        self.transform = transform
        self.early_transform = early_transform
        self.early_epochs = early_epochs if early_transform is not None else 0
        self.bad_files = bad_files
        self.max_consecutive_failures = max_consecutive_failures
        self.decoder_threads = decoder_threads

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, ...]) -> dict:
        if isinstance(item, tuple):
            index, seed, *epoch = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._load_or_substitute(index, epoch[0] if epoch else None)
        return self._load_or_substitute(item, None)

    def transform_for(self, epoch: int | None):
        """The early transform for items of the first ``early_epochs`` epochs, else the main one."""
        early = epoch is not None and epoch < self.early_epochs
        return self.early_transform if early else self.transform

    def _load_or_substitute(self, index: int, epoch: int | None) -> dict:
        if not self.train:
            try:
                return self.read(index, epoch)
            except VideoDecodeError as err:
                path = self.samples[index][0]
                if self.bad_files is not None:
                    self.bad_files.record(path, str(err).removeprefix(f"{path}: "))
                return self._left_out(index, epoch)
        failures = []
        for attempt in range(min(self.max_consecutive_failures, len(self.samples))):
            candidate = (index + attempt) % len(self.samples)
            path = self.samples[candidate][0]
            try:
                return self.read(candidate, epoch)
            except VideoDecodeError as err:
                failures.append(path)
                if self.bad_files is not None:
                    self.bad_files.record(path, str(err).removeprefix(f"{path}: "))
        raise VideoDecodeError(
            f"{len(failures)} videos in a row could not be decoded ({failures[0]} ... {failures[-1]}); "
            "the split looks broken: check the files or the data.root"
            + (f", and {self.bad_files.path}" if self.bad_files is not None else "")
        )

    def read(self, index: int, epoch: int | None = None) -> dict:
        """Item ``index`` decoded and transformed, nothing standing in for it.

        Raises:
            VideoDecodeError: the file cannot be read.
        """
        path, label = self.samples[index]
        count = self.clips_per_video or 1

        def timestamps(info):
            if self.train:
                starts = [self.clip.random_start(info) for _ in range(count)]
            else:
                starts = self.clip.uniform_starts(info, count)
            return [t for start in starts for t in self.clip.timestamps(start)]

        frames, _ = read_clip(path, timestamps, self.decoder_threads, self.display_aspect)
        return self._item(self._views(frames, epoch), label, index)

    def _views(self, frames: torch.Tensor, epoch: int | None) -> torch.Tensor:
        """The transformed clips of ``(clips * T, 3, H, W)`` frames, shaped as an item's ``video``."""
        transform = self.transform_for(epoch)
        views = [transform(tv_tensors.Video(clip)) for clip in frames.split(self.clip.num_frames)]
        if self.clips_per_video is None:
            return views[0]
        return torch.stack(views) if self.train else torch.cat(views)

    def _left_out(self, index: int, epoch: int | None) -> dict:
        """The item of an unreadable evaluation video: zeros of an item's shape, ``valid`` False."""
        frames = torch.zeros(self.clip.num_frames * (self.clips_per_video or 1), 3, 16, 16, dtype=torch.uint8)
        return self._item(torch.zeros_like(self._views(frames, epoch)), -1, index, valid=False)

    @staticmethod
    def _item(video: torch.Tensor, label: int, index: int, valid: bool = True) -> dict:
        return {
            "video": video,
            "label": torch.tensor(label),
            "index": torch.tensor(index),
            "valid": torch.tensor(valid),
        }


def aggregate_views(logits: torch.Tensor) -> torch.Tensor:
    """``(videos, views, classes)`` logits -> per-video class probabilities: the mean of the
    views' softmax, as the X3D and SlowFast papers test (and ``test``, the export's verification
    and ``predict`` score a video)."""
    return logits.float().softmax(-1).mean(1)


def collate_clips(items: list[dict]) -> dict:
    """Batches of videos of ``(clips, C, T, H, W)`` as batches of clips: each clip one sample."""
    batch = default_collate(items)
    clips = batch["video"].shape[1]
    return {
        "video": batch["video"].flatten(0, 1),
        "label": batch["label"].repeat_interleave(clips),
        "index": batch["index"].repeat_interleave(clips),
        "valid": batch["valid"].repeat_interleave(clips),
    }
