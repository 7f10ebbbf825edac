"""Classify videos with an exported program, as the run's test scored them.

The library (:mod:`.predictor`): :class:`Predictor`, :func:`predict`, :func:`score`; videos
over time (:mod:`.timeline`); what to run on (:mod:`.inputs`); the command line
(``python -m vidaccel_train.predict``, :mod:`.__main__`).
"""

from vidaccel_train.data.clips import Views
from vidaccel_train.predict.inputs import collect_inputs, read_list, split_inputs
from vidaccel_train.predict.predictor import Prediction, Predictor, parse_views, predict, score, views_dataset
from vidaccel_train.predict.timeline import Timeline, timeline_names

__all__ = [
    "Prediction",
    "Predictor",
    "Timeline",
    "Views",
    "collect_inputs",
    "parse_views",
    "predict",
    "read_list",
    "score",
    "split_inputs",
    "timeline_names",
    "views_dataset",
]
