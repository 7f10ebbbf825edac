"""Training clips/s: the full pipeline on real video files against in-memory tensors (the
compute bound), same model, batch and device, for fp32 and QAT steps, in one run.

    python scripts/bench_train_throughput.py [--model x3d_xs] [--batch 8] [--workers 2] [--device cuda]
        [--decoder-threads 1] [--clips-per-video 1] [--samples 1920] [--steps 20] [--json out.json]

The pipeline is this project's (PyAV decode of the clip's frames, torchvision v2 train
transform, persistent DataLoader workers, pinned memory on GPU) over the generated benchmark
dataset of ``bench_data.py`` (or ``--root``). A ratio near 1 means the data path keeps up with
the model. Clips are channels-last, as training feeds them (``module.channels_last``); a third
figure, in-memory NCTHW clips, shows what that layout buys. ``--samples`` repeats the train
index to that many items so that the measured steps never cross an epoch boundary (which
drains the workers' queue): the steady state of a long Kinetics epoch, not the start-up of a
short one. Timing starts after the first batch and every batch the workers queued meanwhile
(``prefetch_factor`` per worker), which would otherwise count as made in no time; on a GPU the
in-memory clips are pinned, as the pipeline's are. ``--model x3d_tiny`` is the tests' tiny mode.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_data import BENCH_SPEC, CLIPS, our_train_loader, warmup_batches

from vidaccel_train.data.layouts import index_split
from vidaccel_train.data.synthetic import generate_dataset
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.models import create_model
from vidaccel_train.quantization import pt2e


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, clips: torch.Tensor, labels: torch.Tensor
) -> None:
    loss = torch.nn.functional.cross_entropy(model(clips), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def clips_per_second(
    model, batches, steps: int, warmup: int, device: torch.device, memory_format: torch.memory_format
) -> float:
    """Clips/s over ``steps`` steps after ``warmup`` steps, clips laid out as ``memory_format``
    (``module.channels_last`` has training use ``torch.channels_last_3d``)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    stream = iter(batches)

    def step() -> int:
        clips, labels = next(stream)
        clips = clips.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        train_step(model, optimizer, clips, labels.to(device, non_blocking=True))
        return len(clips)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, count = time.perf_counter(), 0
    for _ in range(steps):
        count += step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="a dataset root in any layout (its train split is read)")
    parser.add_argument("--model", choices=sorted(CLIPS), default="x3d_xs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decoder-threads", type=int, default=1, help="data.decoder_threads")
    parser.add_argument("--clips-per-video", type=int, default=1, help="data.train_clips_per_video")
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help="repeat the train index to this many items (0: as it is); enough for every measured step",
    )
    parser.add_argument("--modes", nargs="+", choices=("fp32", "qat"), default=["fp32", "qat"])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)

    root = args.root or generate_dataset(Path("data/bench"), BENCH_SPEC)
    samples = index_split(root, "train").samples
    if args.samples > len(samples):
        samples = (samples * (args.samples // len(samples) + 1))[: args.samples]
    # The measured steps, the warm-up (the first batch and the workers' queue) and the queue refilled behind them.
    needed = (args.steps + 1 + 2 * args.workers * 2) * args.batch
    if len(samples) * args.clips_per_video < needed:
        print(
            f"warning: {len(samples)} items give fewer clips than the {needed} the measurement and the workers' "
            f"prefetch use: epoch boundaries will be timed; pass --samples {needed}"
        )
    contract = CLIPS[args.model]
    num_frames, crop = contract.num_frames, contract.crop_size
    loader = our_train_loader(
        samples,
        contract,
        build_transform(True, crop, contract.train_short_side),
        args.batch,
        args.workers,
        args.clips_per_video,
        args.decoder_threads,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )

    def pipeline():
        while True:
            for batch in loader:
                yield batch["video"], batch["label"]

    def in_memory():
        clips, labels = torch.randn(args.batch, 3, num_frames, crop, crop), torch.randint(0, 400, (args.batch,))
        if loader.pin_memory:  # copied to the device as the pipeline's batches are: from pinned memory
            clips, labels = clips.pin_memory(), labels.pin_memory()
        while True:
            yield clips, labels

    shape = (3, num_frames, crop, crop)
    print(
        f"{args.model}: batch {args.batch}, {args.workers} workers, {args.decoder_threads} decoder thread(s), "
        f"{args.clips_per_video} clip(s) per video, {device}, {len(samples)} items from {root}"
    )
    report = {
        "model": args.model,
        "batch": args.batch,
        "workers": args.workers,
        "device": str(device),
        "clips_per_video": args.clips_per_video,
        "decoder_threads": args.decoder_threads,
        "items": len(samples),
    }
    channels_last, contiguous = torch.channels_last_3d, torch.contiguous_format
    runs = (
        ("in-memory", in_memory, channels_last),
        ("pipeline", pipeline, channels_last),
        ("in-memory NCTHW", in_memory, contiguous),
    )
    # The pipeline's first batch and what its workers queued meanwhile are not timed; the
    # in-memory sources warm up as long, so every figure starts from the same point.
    warmup = max(2, warmup_batches(loader))
    for mode in args.modes:
        rates = {}
        for source_name, source, memory_format in runs:
            torch.manual_seed(0)
            model = create_model(args.model, num_classes=400)
            if mode == "qat":  # channels-last weights when the clips are, as the training module does
                model = pt2e.prepare(model, shape, "qat", channels_last=memory_format == channels_last)
            model = model.to(device)
            model.train()  # an exported QAT graph's train() returns None: no chaining
            rates[source_name] = clips_per_second(model, source(), args.steps, warmup, device, memory_format)
        print(
            f"  {mode:5s} in-memory {rates['in-memory']:8.1f} clips/s   full pipeline {rates['pipeline']:8.1f} clips/s   "
            f"ratio {rates['pipeline'] / rates['in-memory']:5.2f}   channels-last over NCTHW clips "
            f"{rates['in-memory'] / rates['in-memory NCTHW']:5.2f}x"
        )
        report[mode] = {
            **rates,
            "ratio": rates["pipeline"] / rates["in-memory"],
            "channels_last_speedup": rates["in-memory"] / rates["in-memory NCTHW"],
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
