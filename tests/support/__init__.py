"""Test helpers, importable from every test (``tests/`` is on the path): tiny runs and their
configs (:mod:`support.runs`), callbacks for real runs (:mod:`support.callbacks`) and the
corpus of real-world video conditions (:mod:`support.video_corpus`)."""

from support.runs import TINY_FIT, TINY_RUN, TINY_SPEC, compose_config, run_cli

__all__ = ["TINY_FIT", "TINY_RUN", "TINY_SPEC", "compose_config", "run_cli"]
