import numpy as np
import pytest

from vidaccel_train.data.synthetic import SyntheticSpec, generate_dataset, render_clip
from vidaccel_train.data.video_io import read_frames_at

from support import TINY_SPEC

SPEC = SyntheticSpec(height=64, width=80, duration_s=1.2, fps=30)


def _estimate_shift(earlier: np.ndarray, later: np.ndarray, reach: int = 8) -> tuple[int, int]:
    """The (dx, dy) by which content moved from ``earlier`` to ``later`` (best-matching shift)."""
    a = earlier.astype(np.float32).mean(-1)
    b = later.astype(np.float32).mean(-1)
    core = (slice(reach, -reach), slice(reach, -reach))
    best = min(
        (np.mean((np.roll(a, (dy, dx), axis=(0, 1))[core] - b[core]) ** 2), dx, dy)
        for dx in range(-reach, reach + 1)
        for dy in range(-reach, reach + 1)
    )
    return best[1], best[2]


@pytest.mark.parametrize("texture", ["smooth", "sharp"])
@pytest.mark.parametrize(
    "motion, direction",
    [
        ("move_left", (-1, 0)),
        ("move_right", (1, 0)),
        ("move_up", (0, -1)),
        ("move_down", (0, 1)),
        ("move_up_left", (-1, -1)),
        ("move_down_right", (1, 1)),
        ("move_up_right", (1, -1)),
        ("move_down_left", (-1, 1)),
    ],
)
def test_translation_classes_move_content_their_way(motion, direction, texture):
    frames = render_clip(SyntheticSpec(**{**SPEC.__dict__, "texture": texture}), motion, np.random.default_rng(3))
    dx, dy = _estimate_shift(frames[10], frames[16])
    assert np.sign(dx) == direction[0] and np.sign(dy) == direction[1]
    assert max(abs(dx), abs(dy)) >= 2  # visible motion between frames 0.2 s apart


def test_one_frame_cannot_tell_classes_apart_but_the_clip_can():
    """Same seed, different motion: the middle frame is identical, the ends are not."""
    clips = {m: render_clip(SPEC, m, np.random.default_rng(7)) for m in ("move_left", "rotate_cw", "approach")}
    middle = len(clips["move_left"]) // 2
    for frames in clips.values():
        np.testing.assert_array_equal(frames[middle], clips["move_left"][middle])
    assert np.abs(clips["rotate_cw"][0].astype(int) - clips["approach"][0].astype(int)).mean() > 5
    assert clips["move_left"].std() > 20  # textured, not flat


def test_generated_tree_is_kinetics_class_folders(tiny_dataset):
    assert (tiny_dataset / "labels.txt").read_text().split() == list(TINY_SPEC.classes)
    for split, count in TINY_SPEC.clips_per_class.items():
        for name in TINY_SPEC.classes:
            assert len(list((tiny_dataset / split / name).glob("*.mp4"))) == count
    frames = read_frames_at(next((tiny_dataset / "train" / "move_up").glob("*.mp4")), [0.0])
    assert frames.shape == (1, 3, TINY_SPEC.height, TINY_SPEC.width)


def test_generation_is_cached_and_deterministic(tiny_dataset, tmp_path):
    clip = tiny_dataset / "val" / "move_left" / "move_left_0001.mp4"
    stamp = clip.stat().st_mtime_ns
    assert generate_dataset(tiny_dataset.parent, TINY_SPEC) == tiny_dataset
    assert clip.stat().st_mtime_ns == stamp  # not written again
    again = generate_dataset(tmp_path, TINY_SPEC, processes=2)  # the first was written in this process
    files = sorted(p.relative_to(tiny_dataset) for p in tiny_dataset.rglob("*.mp4"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.mp4"))
    assert all((tiny_dataset / f).read_bytes() == (again / f).read_bytes() for f in files)  # byte for byte
    assert not list(tmp_path.glob(".*tmp*"))  # no staging folder left behind


def test_a_different_spec_is_a_different_dataset(tmp_path):
    small = SyntheticSpec(
        classes=("move_left", "approach"),
        clips_per_class={"train": 1, "val": 1, "test": 1},
        height=32,
        width=32,
        duration_s=0.5,
        fps=10,
    )
    other = SyntheticSpec(**{**small.__dict__, "seed": 1})
    assert generate_dataset(tmp_path, small) != generate_dataset(tmp_path, other)


def test_a_dataset_an_older_renderer_wrote_is_not_reused(monkeypatch):
    from vidaccel_train.data import synthetic

    today = synthetic.dataset_dir("data", TINY_SPEC)
    monkeypatch.setattr(synthetic, "RENDERING_VERSION", synthetic.RENDERING_VERSION - 1)
    assert synthetic.dataset_dir("data", TINY_SPEC) != today


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": ("move_left", "teleport")}, "teleport"),
        ({"height": 31}, "even"),
        ({"clips_per_class": {"train": 1}}, "val"),
        ({"texture": "plaid"}, "smooth"),
    ],
)
def test_bad_specs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticSpec(**kwargs)


def test_a_sharp_texture_is_flat_colour_patches_with_hard_edges():
    spec = SyntheticSpec(**{**SPEC.__dict__, "texture": "sharp"})
    smooth, sharp = (render_clip(s, "move_left", np.random.default_rng(5))[0].astype(int) for s in (SPEC, spec))
    # Neighbouring pixels either match or jump (a patch edge); the smooth texture only drifts.
    steps = np.abs(np.diff(sharp, axis=1)).max(-1)
    assert (steps <= 2).mean() > 0.4 and (steps > 60).mean() > 0.1
    assert np.abs(np.diff(smooth, axis=1)).max(-1).max() < 60
