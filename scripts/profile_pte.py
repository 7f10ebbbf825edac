"""Where an ExecuTorch program spends its time: per-operator times from the runtime's ETDump.

    python scripts/profile_pte.py <run>/export/model_int8.pte [--threads 1] [--runs 10]
    python scripts/profile_pte.py --model x3d_xs [--precision int8]   # build one from the zoo first

Prints, grouped by XNNPACK operator kind, the median time per run and call count, then the
time outside the delegate (operators the portable runtime ran, and the runtime's own
overhead). Use it to see what a deploy-form change buys before timing whole models.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch

from vidaccel_train.export import lower_to_executorch
from vidaccel_train.export.artifacts import calibrate_int8
from vidaccel_train.export.runtime import set_runtime_threads
from vidaccel_train.files import write_atomic
from vidaccel_train.models import create_model
from vidaccel_train.models.deploy import to_deploy_form
from vidaccel_train.models.zoo import zoo_entry


def build(name: str, precision: str, folder: Path) -> tuple[Path, tuple[int, ...]]:
    entry = zoo_entry(name)
    shape = (3, entry.num_frames, entry.crop_size, entry.crop_size)
    model = create_model(name, num_classes=400).eval()
    if precision == "int8":
        _, deployed = calibrate_int8(model, shape, [{"video": torch.randn(2, *shape)}], 1)
    else:
        deployed = to_deploy_form(model, entry.num_frames)
    program = lower_to_executorch(deployed, torch.randn(1, *shape))
    return write_atomic(folder / f"{name}_{precision}.pte", program.buffer), (1, *shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program", nargs="?", type=Path, help="a .pte (its manifest.json gives the input shape)")
    parser.add_argument("--model", help="build the program from this zoo model instead")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if not args.program and not args.model:
        parser.error("give a .pte or --model")

    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    with tempfile.TemporaryDirectory() as folder:
        if args.model:
            path, shape = build(args.model, args.precision, Path(folder))
        else:
            import json

            path = args.program
            shape = tuple(json.loads((path.parent / "manifest.json").read_text())["input_shape"])
        set_runtime_threads(args.threads)
        data = path.read_bytes()  # from bytes, as export.runtime loads programs (the x86 program needs it)
        program = _load_for_executorch_from_buffer(data, enable_etdump=True)
        clip = torch.randn(*shape)
        for _ in range(args.runs):
            program.forward([clip])
        etdump = Path(folder) / "profile.etdp"
        program.write_etdump_result_to_file(str(etdump))
        frame = Inspector(etdump_path=str(etdump)).to_dataframe()

    frame = frame[frame["event_block_name"] == "Execute"]
    delegated = frame[frame["is_delegated_op"] == True]  # noqa: E712 (a pandas mask)
    kinds = delegated["event_name"].astype(str).map(lambda name: re.sub(r"[#\d_ ]+$", "", name))
    table = (
        delegated.assign(kind=kinds)
        .groupby("kind")["p50 (ms)"]
        .agg(["sum", "count"])
        .sort_values("sum", ascending=False)
    )
    total = frame[frame["event_name"] == "Method::execute"]["p50 (ms)"].sum()
    inside = table["sum"].sum()
    print(
        f"{path.name}: input {shape}, {args.threads} thread(s), medians of {args.runs} runs (profiling adds overhead)"
    )
    print(f"  whole program {total:8.2f} ms; inside XNNPACK {inside:8.2f} ms")
    print(f"  {'XNNPACK operator':45s} {'ms/run':>8s} {'share':>6s} {'calls':>6s}")
    for kind, row in table.iterrows():
        print(f"  {kind[:45]:45s} {row['sum']:8.2f} {row['sum'] / inside:6.1%} {int(row['count']):6d}")
    outside = frame[frame["is_delegated_op"].ne(True) & ~frame["event_name"].isin(["Method::execute", "DELEGATE_CALL"])]
    if len(outside):
        print("  outside the delegate:")
        for name, ms in outside.groupby("event_name")["p50 (ms)"].sum().sort_values(ascending=False).head(10).items():
            print(f"    {name[:60]:60s} {ms:8.2f}")


if __name__ == "__main__":
    main()
