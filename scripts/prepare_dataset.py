"""Alias of ``python -m vidaccel_train.data.prepare`` (see its ``--help``)."""

from vidaccel_train.data.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
