"""A generated Kinetics-style dataset whose classes can only be told apart by motion.

Every clip shows a random coloured multi-scale noise texture seen through a moving window;
the class is how the content moves (direction, rotation sense, approach or recede). A single
frame carries no class information, so a model must use time. Files are real H.264 mp4s in
the class-folder layout (``<split>/<class>/<clip>.mp4`` plus ``labels.txt``), read back by the
same code that reads Kinetics.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress

from vidaccel_train.data.video_io import write_video
from vidaccel_train.files import atomic_path

DIAGONAL = math.sqrt(0.5)  # a diagonal move at the same speed as the straight ones
# Content velocity per class: (x, y) translation, rotation sense, zoom sense.
MOTIONS: dict[str, tuple[float, float, float, float]] = {
    "move_left": (-1, 0, 0, 0),
    "move_right": (1, 0, 0, 0),
    "move_up": (0, -1, 0, 0),
    "move_down": (0, 1, 0, 0),
    "move_up_left": (-DIAGONAL, -DIAGONAL, 0, 0),
    "move_up_right": (DIAGONAL, -DIAGONAL, 0, 0),
    "move_down_left": (-DIAGONAL, DIAGONAL, 0, 0),
    "move_down_right": (DIAGONAL, DIAGONAL, 0, 0),
    "rotate_cw": (0, 0, 1, 0),
    "rotate_ccw": (0, 0, -1, 0),
    "approach": (0, 0, 0, 1),
    "recede": (0, 0, 0, -1),
}
SPLITS = ("train", "val", "test")
TEXTURES = ("smooth", "sharp")
DONE_MARKER = "spec.json"
# Part of every dataset's fingerprint: raised whenever render_clip draws different frames for the
# same spec, so a dataset an older generator wrote is not reused as if it were this one's.
RENDERING_VERSION = 2  # 2: zoom as fast as the translations


@dataclass(frozen=True)
class SyntheticSpec:
    classes: tuple[str, ...] = tuple(MOTIONS)
    clips_per_class: dict[str, int] = field(default_factory=lambda: {"train": 16, "val": 4, "test": 4})
    height: int = 128
    width: int = 160
    duration_s: float = 2.0
    fps: int = 30
    # Translation in frame short sides per second; rotation and zoom scale with it (at 0.35: 70
    # degrees a second; a zoom that moves the short side's edges as fast as a translation, x4
    # over a 2 s clip).
    speed: float = 0.35
    # "smooth": soft colour noise; "sharp": the same noise cut into flat colour patches with hard
    # edges, whose motion shows at every scale (a from-scratch X3D-XS learns it many times faster).
    texture: str = "smooth"
    seed: int = 0

    def __post_init__(self):
        unknown = [c for c in self.classes if c not in MOTIONS]
        if unknown:
            raise ValueError(f"unknown synthetic classes {unknown}; choose from {sorted(MOTIONS)}")
        if self.height % 2 or self.width % 2:
            raise ValueError(f"synthetic height and width must be even for H.264, got {self.height}x{self.width}")
        if self.texture not in TEXTURES:
            raise ValueError(f"synthetic texture must be one of {TEXTURES}, got '{self.texture}'")
        missing = [s for s in SPLITS if s not in self.clips_per_class]
        if missing:
            raise ValueError(f"synthetic clips_per_class needs a count for {missing}")

    def fingerprint(self) -> str:
        blob = json.dumps({**asdict(self), "rendering": RENDERING_VERSION}, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _texture(rng: np.random.Generator, size: int, kind: str) -> torch.Tensor:
    """Coloured noise summed over octaves: edges at every scale, so motion is visible.

    ``sharp`` cuts each channel at its median: eight flat colours with hard edges.
    """
    texture = torch.zeros(1, 3, size, size)
    for cells, weight in ((4, 1.0), (8, 0.8), (16, 0.7), (32, 0.6), (64, 0.5)):
        noise = torch.from_numpy(rng.standard_normal((1, 3, cells, cells)).astype(np.float32))
        texture += weight * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    texture -= texture.amin(dim=(2, 3), keepdim=True)
    texture /= texture.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    if kind == "sharp":
        texture = (texture > texture.flatten(2).median(dim=2).values[..., None, None]).float()
    return texture


def render_clip(spec: SyntheticSpec, motion: str, rng: np.random.Generator) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` uint8 of one clip of class ``motion``."""
    height, width = spec.height, spec.width
    size = int(math.ceil(2.6 * max(height, width)))
    texture = _texture(rng, size, spec.texture)
    num_frames = max(1, int(round(spec.duration_s * spec.fps)))
    t = torch.arange(num_frames, dtype=torch.float32) / spec.fps - spec.duration_s / 2
    vx, vy, spin, zoom = MOTIONS[motion]
    pace = float(rng.uniform(0.75, 1.25))
    speed_px = spec.speed * min(height, width) * pace
    # The window moves against the content: content going right means the window goes left.
    shift_x = -vx * speed_px * t + float(rng.uniform(-0.1, 0.1)) * width
    shift_y = -vy * speed_px * t + float(rng.uniform(-0.1, 0.1)) * height
    relative = spec.speed / 0.35
    angle = -spin * math.radians(70.0) * relative * pace * t + float(rng.uniform(0, 2 * math.pi))
    # d(log scale)/dt = 2 * speed: the short side's edges, half a short side from the centre, move
    # as fast as a translation does (a slower zoom is the one motion X3D-XS confuses).
    scale = torch.exp(-zoom * 2.0 * spec.speed * pace * t)
    cos, sin = torch.cos(angle), torch.sin(angle)
    half = size / 2
    theta = torch.zeros(num_frames, 2, 3)
    theta[:, 0, 0] = cos * scale * (width / 2) / half
    theta[:, 0, 1] = -sin * scale * (height / 2) / half
    theta[:, 1, 0] = sin * scale * (width / 2) / half
    theta[:, 1, 1] = cos * scale * (height / 2) / half
    # The shift is along the frame's own axes, so directions hold whatever the texture's angle.
    theta[:, 0, 2] = (cos * shift_x - sin * shift_y) / half
    theta[:, 1, 2] = (sin * shift_x + cos * shift_y) / half
    grid = F.affine_grid(theta, [num_frames, 3, height, width], align_corners=False)
    frames = F.grid_sample(
        texture.expand(num_frames, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    gain = float(rng.uniform(0.7, 1.0))
    offset = float(rng.uniform(0.0, 1.0 - gain))
    frames = (frames * gain + offset).clamp(0, 1)
    return (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def dataset_dir(root: str | Path, spec: SyntheticSpec) -> Path:
    """Where the dataset of ``spec`` lives under ``root``: one folder per parameter set."""
    return Path(root) / f"synthetic-{spec.fingerprint()}"


def _write_clip(spec: SyntheticSpec, path: Path, split_index: int, class_index: int, clip_index: int) -> None:
    """One file, the same bytes in whichever process writes it: its randomness is its own."""
    rng = np.random.default_rng([spec.seed, split_index, class_index, clip_index])
    write_video(path, render_clip(spec, spec.classes[class_index], rng), spec.fps)


def _single_threaded() -> None:
    torch.set_num_threads(1)  # one process per core: no core shared between torch thread pools


def generate_dataset(root: str | Path, spec: SyntheticSpec, processes: int | None = None) -> Path:
    """Write the dataset under ``root/<fingerprint>`` once; later calls return the cached copy.

    The tree is built in a temporary sibling and renamed into place, so an interrupted run never
    leaves a half-written dataset behind. ``processes`` render and encode clips in parallel
    (default: one per core for datasets worth the start-up of a process, 64 clips or more);
    the files are byte for byte the same whatever the count.
    """
    root = Path(root)
    target = dataset_dir(root, spec)
    if (target / DONE_MARKER).is_file():
        return target
    with atomic_path(target) as staging:  # a stale, unfinished copy is replaced whole
        _render(spec, staging, processes)
    return target


def _render(spec: SyntheticSpec, staging: Path, processes: int | None) -> None:
    """Every clip of ``spec``, its labels and its done-marker, into the folder ``staging``."""
    jobs = []
    for split_index, split in enumerate(SPLITS):
        for class_index, name in enumerate(spec.classes):
            folder = staging / split / name
            folder.mkdir(parents=True)
            for clip_index in range(spec.clips_per_class[split]):
                jobs.append((folder / f"{name}_{clip_index:04d}.mp4", split_index, class_index, clip_index))
    if processes is None:
        processes = min(os.cpu_count() or 1, max(1, len(jobs) // 64))
    with Progress(transient=False) as progress:
        task = progress.add_task(f"Generating {len(jobs)} synthetic clips", total=len(jobs))
        if processes <= 1:
            for job in jobs:
                _write_clip(spec, *job)
                progress.advance(task)
        else:
            # spawn: a forked child would inherit the parent's torch thread pools mid-use.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(processes, mp_context=context, initializer=_single_threaded) as pool:
                for done in as_completed([pool.submit(_write_clip, spec, *job) for job in jobs]):
                    done.result()
                    progress.advance(task)
    (staging / "labels.txt").write_text("\n".join(spec.classes) + "\n")
    (staging / DONE_MARKER).write_text(json.dumps(asdict(spec), indent=2, default=list))
