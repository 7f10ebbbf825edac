"""Verify an export's programs on the CPU they are for: ``python -m vidaccel_train.export.verify_target
<run>/export [--isa aarch64] [--cpus cortex-a53,max] [--clips N] [--tolerance T]``.

Runs each program of the export folder through ExecuTorch's C++ runtime on the ISA (aarch64:
cross-built, under qemu-user 10 or newer, once per CPU model: by default cortex-a53 (plain NEON),
cortex-a76 (dot product), neoverse-v1 (i8mm, SVE), neoverse-n2 (SVE2) and max (SME)) on the
test clips the export kept (target_clips.npy), and compares the logits with the same program's on x86 on
them (target_reference.npz). Prints one line per CPU model: the features the runtime saw, the
instruction families its kernels executed, top-1 agreement, the largest logit difference and
the seconds; records them in the manifest (``targets``) and report. A CPU model whose logits are
further from x86 than the tolerance fails the check: one ``error:`` line naming it, exit code 2.
The tools come with ``bash scripts/setup.sh``. What this cannot tell: the speed on a phone.
"""

from __future__ import annotations

import logging
import sys

from vidaccel_train.cli import ArgumentParser, run_command
from vidaccel_train.export.target import DEFAULT_CPUS, ISAS, TOLERANCE, verify_folder


def _parser() -> ArgumentParser:
    parser = ArgumentParser("python -m vidaccel_train.export.verify_target", __doc__)
    parser.add_argument("export", help="an export folder (<run>/export)")
    parser.add_argument("--isa", choices=ISAS, default="aarch64", help="the target ISA (default: aarch64)")
    parser.add_argument(
        "--cpus",
        type=lambda text: [cpu.strip() for cpu in text.split(",") if cpu.strip()],
        help=f"comma-separated CPU models (QEMU_CPU names; default: {','.join(DEFAULT_CPUS['aarch64'])})",
    )
    parser.add_argument("--clips", type=int, help="verify on the first N clips of the sample (default: all)")
    parser.add_argument("--program", action="append", help="a program file of the folder (default: each listed)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"the largest logit difference from x86 that passes (default: {TOLERANCE:g})",
    )
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _, records = verify_folder(args.export, args.isa, args.cpus, args.clips, args.tolerance, args.program)
    for r in records:
        print(
            f"{r.file} on {r.isa} {r.cpu}: passed, kernels {'+'.join(r.kernels) or 'n/a'} "
            f"(features {','.join(r.features) or 'none'}), top-1 agreement {r.agreement:.0%} of {r.clips} clips, "
            f"max logit error {r.max_logit_error:.3g}, {r.seconds:.1f} s"
        )
    emulator = next((r.emulator for r in records if r.emulator), None)
    if emulator:
        print(f"emulator: {emulator}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
