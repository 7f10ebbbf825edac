"""Tiny runs for tests: the generated dataset's spec, the overrides that make any run tiny, the
training config as the CLI composes it, and the CLI in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vidaccel_train.config import CONFIG_DIR
from vidaccel_train.data.synthetic import SyntheticSpec

TESTS = Path(__file__).resolve().parents[1]

TINY_SPEC = SyntheticSpec(
    classes=("move_left", "move_right", "move_up", "move_down"),
    clips_per_class={"train": 3, "val": 2, "test": 2},
    height=48,
    width=64,
    duration_s=1.0,
    fps=15,
)


def compose_config(run_dir: Path, data_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The training config as the CLI composes it, with every path under the test's folders."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root_dir={run_dir}",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={run_dir}",
                *overrides,
            ],
        )


# Overrides that make any run tiny: x3d_tiny on the session's small generated dataset.
TINY_RUN = [
    "model=x3d_tiny",
    "data.synthetic.classes=[move_left,move_right,move_up,move_down]",
    "data.synthetic.clips_per_class={train:3,val:2,test:2}",
    "data.synthetic.height=48",
    "data.synthetic.width=64",
    "data.synthetic.duration_s=1.0",
    "data.synthetic.fps=15",
    "data.num_workers=0",
    "data.batch_size=4",
    "model.clip.crop_size=32",
    "model.clip.train_short_side=[36,40]",
    "model.clip.eval_short_side=36",
    # The tiny dataset above (TINY_SPEC), trained in fp32 at one size unless a test asks otherwise.
    "data.synthetic.speed=0.35",
    "data.synthetic.texture=smooth",
    "data.low_res_epochs=0",
    "quant=none",
]

# A tiny fit with checkpoints but without the export (tests of the export ask for it).
TINY_FIT = [*TINY_RUN, "callbacks.export.enabled=false", "callbacks.rich_progress_bar=null"]


def run_cli(
    run_dir: Path, data_dir: Path, overrides: list[str], timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m vidaccel_train` in its own process (this folder importable, for KillAt);
    flags such as ``-m`` may come anywhere in ``overrides``; ``env`` adds environment variables."""
    tests = TESTS
    flags = [o for o in overrides if o.startswith("-")]
    overrides = [o for o in overrides if not o.startswith("-")]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train",
            *flags,
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={data_dir}",
            *overrides,
        ],
        cwd=tests.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")])),
            "HYDRA_FULL_ERROR": "1",
            **(env or {}),
        },
    )


def predict_cli(*args, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m vidaccel_train.predict ARGS` in its own process, from the repository root;
    ``kwargs`` go to :func:`subprocess.run` (``preexec_fn``, ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "vidaccel_train.predict", *map(str, args)],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
