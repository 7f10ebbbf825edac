"""Classify a video with an exported artifact.

    python -m vidaccel_train.predict <run>/export/model_int8.pte clip.mp4 [--topk 5] [--json]

The manifest beside the artifact says how to decode and normalise the clip and names the
classes; an artifact whose sha256 differs from the manifest's is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torchvision import tv_tensors

from vidaccel_train.data.clips import ClipSpec
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.data.video_io import VideoDecodeError, read_clip
from vidaccel_train.export.artifacts import MANIFEST, sha256_of
from vidaccel_train.export.executorch import ExecuTorchModel, LoweringError


class ArtifactError(RuntimeError):
    """An artifact that is missing, unlisted, or not the file its manifest describes."""


def load_verified(artifact: str | Path) -> tuple[ExecuTorchModel, dict]:
    """The program and its manifest, after checking the file against the manifest's sha256."""
    artifact = Path(artifact)
    manifest_path = artifact.parent / MANIFEST
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} does not exist")
    if not manifest_path.is_file():
        raise ArtifactError(f"no {MANIFEST} beside {artifact}: predict needs the export folder as written")
    manifest = json.loads(manifest_path.read_text())
    record = next((a for a in manifest["artifacts"] if a["file"] == artifact.name), None)
    if record is None:
        raise ArtifactError(f"{artifact.name} is not listed in {manifest_path}")
    actual = sha256_of(artifact)
    if actual != record["sha256"]:
        raise ArtifactError(
            f"refusing {artifact}: its sha256 {actual[:16]}… is not the manifest's {record['sha256'][:16]}…; "
            "the file was modified or damaged. Export it again (python -m vidaccel_train.export ckpt_path=...)."
        )
    return ExecuTorchModel(artifact), manifest


def clip_frames(video: str | Path, manifest: dict) -> torch.Tensor:
    """The centre clip of ``video`` as the manifest's model takes it, before scaling: uint8
    ``(T, 3, H, W)``, upright, at the display aspect the model was trained at (``stored`` for
    manifests written before the option existed)."""
    clip = ClipSpec(manifest["num_frames"], manifest["sampling_rate"], manifest["target_fps"])
    display_aspect = manifest.get("display_aspect", "stored")
    return read_clip(video, lambda info: clip.timestamps(clip.centre_start(info)), display_aspect=display_aspect)[0]


def predict(artifact: str | Path, video: str | Path, topk: int = 5) -> list[tuple[str, float]]:
    """Top-``topk`` (class name, probability) for the centre clip of ``video``."""
    program, manifest = load_verified(artifact)
    frames = clip_frames(video, manifest)
    transform = build_transform(False, manifest["crop_size"], manifest["short_side"], manifest["mean"], manifest["std"])
    batch = transform(tv_tensors.Video(frames)).unsqueeze(0)
    probabilities = torch.softmax(program(batch).reshape(-1), dim=0)
    scores, indices = probabilities.topk(min(topk, probabilities.numel()))
    return [(manifest["classes"][i], float(s)) for s, i in zip(scores, indices)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidaccel_train.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="a .pte from an export folder (manifest.json beside it)")
    parser.add_argument("video", help="a video file (mp4, webm, mkv, avi, ...)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        top = predict(args.artifact, args.video, args.topk)
    except (ArtifactError, LoweringError, VideoDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"video": str(args.video), "artifact": str(args.artifact),
                          "predictions": [{"label": label, "score": score} for label, score in top]}))
    else:
        width = max(len(label) for label, _ in top)
        for label, score in top:
            print(f"{label:<{width}}  {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
