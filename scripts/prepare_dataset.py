"""Write a training copy of a video dataset made for random access, and report what it buys.

    python scripts/prepare_dataset.py /data/kinetics400 /data/k400_train_copy --workers 16 \
        [--splits train val test] [--short-side 256] [--keyframe-interval 16] [--crf 23]

Every clip is re-encoded (H.264, a keyframe every --keyframe-interval frames, no B-frames, short
side --short-side, audio dropped) into a dataset root to train from
(``data.root=<out> data.layout=list_file``). The report (printed, and ``prepare_report.json`` in
the copy) gives the sizes, the time taken, and on a sample of train videos the random-clip decode
speed of original and copy (one decoder thread, X3D-XS clips unless --model) and the copy's PSNR
against the original as training sees them. Unreadable source clips are listed in
``bad_files.txt`` and left out. Exits 1 when a split has no readable clip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vidaccel_train.data.clips import ClipSpec
from vidaccel_train.data.layouts import LAYOUTS
from vidaccel_train.data.prepare import EncodeSettings, prepare_dataset
from vidaccel_train.errors import USER_ERRORS
from vidaccel_train.models.zoo import zoo_entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the dataset root, in any layout data.layout accepts")
    parser.add_argument("out", help="folder for the copy (a dataset root) and its report")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--short-side", type=int, default=EncodeSettings.short_side, help="pixels; never upscaled")
    parser.add_argument("--keyframe-interval", type=int, default=EncodeSettings.keyframe_interval, help="frames")
    parser.add_argument("--crf", type=int, default=EncodeSettings.crf, help="x264 quality (lower: better, larger)")
    parser.add_argument("--model", default="x3d_xs", help="whose clip shape the speed and PSNR are measured on")
    parser.add_argument("--psnr-short-side", type=int, default=182,
                        help="both videos are scaled to this short side for the PSNR (X3D-XS/S train at 182-228)")
    parser.add_argument("--measure-videos", type=int, default=32, help="train videos in the speed and PSNR check")
    args = parser.parse_args()
    entry = zoo_entry(args.model)
    settings = EncodeSettings(args.short_side, args.keyframe_interval, args.crf)
    try:
        report = prepare_dataset(args.root, args.out, args.splits, args.layout, settings, args.workers,
                                 args.measure_videos, ClipSpec(entry.num_frames, entry.sampling_rate),
                                 args.psnr_short_side)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    print(f"training copy in {args.out} (data.root={args.out} data.layout=list_file); "
          f"unreadable source clips in {os.path.join(args.out, 'bad_files.txt')}")
    return 1 if any(s["videos"] == 0 for s in report["splits"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
