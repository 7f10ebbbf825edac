"""QAT training-step time over fp32 step time, same model, batch and device, measured side by side.

    python scripts/bench_qat_step.py --model x3d_xs --batch 8 [--device cuda] [--threads 2]

fp32 is the train form (Conv3d + BatchNorm) as in the fp32 phase, with clips laid out
channels-last as training does (``module.channels_last``, the default) and in PyTorch's default
layout. QAT is the exported deploy form with fake quantization, as in the QAT phase: as training
runs it (channels-last weights, vectorised activation fake-quantizers, moved values passed
through); the same requantizing moved values as torchao does (``quant.requantize_moved_values``);
and torchao's QAT as it comes (default layout, stock fake-quantizers, requantizing). Steps
alternate between the variants so that machine noise hits all alike; medians are reported, and
the ratios are over the fp32 step training runs. On the noisy 2-core developer machine the same
ratio moved by up to 0.3 between runs (1.08x-1.36x): compare within one run, and run it more
than once. Like training, the script keeps freed memory in the process
(:mod:`vidaccel_train.allocator`); run it with ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432``
(any malloc setting of yours) to measure glibc's default behaviour instead.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from vidaccel_train.allocator import keep_freed_memory
from vidaccel_train.models import create_model
from vidaccel_train.models.zoo import zoo_entry
from vidaccel_train.quantization import pt2e
from vidaccel_train.quantization.fake_quant import vectorise_fake_quantize


def step_timer(model: torch.nn.Module, clip: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> float:
        if clip.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(clip), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if clip.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="x3d_xs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=None, help="default: the model's crop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    kept = keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    entry = zoo_entry(args.model)
    crop = args.crop or entry.crop_size
    shape = (3, entry.num_frames, crop, crop)
    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = torch.randn(args.batch, *shape, device=device)
    labels = torch.randint(0, 400, (args.batch,), device=device)

    channels_last = clip.contiguous(memory_format=torch.channels_last_3d)
    fp32 = create_model(args.model, num_classes=400).to(device).train()
    net = create_model(args.model, num_classes=400).to(device).eval()

    def qat(**options):
        prepared = pt2e.prepare(copy.deepcopy(net), shape, "qat", **options)
        prepared.train()  # the patched train() of an exported graph returns None
        return prepared

    torchao_qat = vectorise_fake_quantize(qat(requantize_moved_values=True), enabled=False)
    # Training hands the QAT graph channels-last clips too; it folds them into frames with a copy.
    timers = {
        "fp32, channels-last clips": step_timer(fp32, channels_last, labels),
        "fp32, default layout": step_timer(fp32, clip, labels),
        "QAT as trained": step_timer(qat(channels_last=True), channels_last, labels),
        "QAT, requantizing moved values": step_timer(
            qat(channels_last=True, requantize_moved_values=True), channels_last, labels
        ),
        "QAT, torchao as it comes": step_timer(torchao_qat, clip, labels),
    }
    for timer in timers.values():  # warm-up
        timer(), timer()
    times = {name: [] for name in timers}
    for _ in range(args.steps):
        for name, timer in timers.items():
            times[name].append(timer())
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"model={args.model} batch={args.batch} clip={shape} device={device} threads={torch.get_num_threads()} "
        f"freed memory kept={kept}"
    )
    baseline = median["fp32, channels-last clips"]
    for name, value in median.items():
        print(
            f"  {name:32s} step median {value * 1000:8.1f} ms ({args.batch / value:6.1f} clips/s)"
            f"  {value / baseline:5.2f}x the channels-last fp32 step"
        )


if __name__ == "__main__":
    main()
