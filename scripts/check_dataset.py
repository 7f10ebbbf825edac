"""Index and check a Kinetics-style download before training on it.

    python scripts/check_dataset.py /data/kinetics400 --out /data/k400_index --workers 8 \
        [--splits train val] [--layout auto] [--min-duration 1.6]

Opens and decodes every listed clip (start, middle, end) in parallel with a progress bar, then
writes a clean index usable as a dataset root (``data.root=<out> data.layout=list_file``), the
list of bad files with reasons, per file what the reader found (``report.csv``: codec, start
offset, rotation, duration and its source, sample aspect ratio) and a summary. Exits 1 when a split has no readable clip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vidaccel_train.data.check import check_dataset
from vidaccel_train.data.layouts import LAYOUTS
from vidaccel_train.errors import USER_ERRORS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the dataset root, in any layout data.layout accepts")
    parser.add_argument("--out", required=True, help="folder for the clean index, bad_files.txt and summary.json")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-duration", type=float, default=0.0, help="seconds; shorter clips count as bad")
    args = parser.parse_args()
    try:
        summary = check_dataset(args.root, args.out, args.splits, args.layout, args.workers, args.min_duration)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    for split, counts in summary["splits"].items():
        codecs = ", ".join(f"{codec} {count}" for codec, count in counts["codecs"].items())
        print(f"{split}: {counts['readable']} readable, {counts['bad']} bad, {counts['missing']} missing, "
              f"{counts['not_video']} not video; {counts['rotated']} rotated, {counts['start_offset']} start at an "
              f"offset, {counts['no_header_duration']} without a duration in the header, {counts['anamorphic']} "
              f"anamorphic; codecs: {codecs or 'none'}")
    print(f"clean index in {args.out}; bad files listed in {os.path.join(args.out, 'bad_files.txt')}; "
          f"per file what was found in {os.path.join(args.out, 'report.csv')}")
    return 1 if any(s["readable"] == 0 for s in summary["splits"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
