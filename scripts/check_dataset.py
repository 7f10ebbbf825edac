"""Alias of ``python -m vidaccel_train.data.check`` (see its ``--help``)."""

from vidaccel_train.data.check import main

if __name__ == "__main__":
    raise SystemExit(main())
