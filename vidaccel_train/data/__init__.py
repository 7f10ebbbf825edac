"""Data: the clip contract (contract.py), decoding (video_io.py), clips and their datasets
(clips.py), transforms, the generated dataset, dataset layouts and tools, the datamodule, live
sources (live.py). Names are imported on first use: the live reader and the dataset tools do
not pay for torch or Lightning before they need them."""

from importlib import import_module

_WHERE = {
    "ClipContract": "vidaccel_train.data.contract",
    "ClipDataset": "vidaccel_train.data.clips",
    "Views": "vidaccel_train.data.clips",
    "SyntheticSpec": "vidaccel_train.data.synthetic",
    "generate_dataset": "vidaccel_train.data.synthetic",
    "VideoDataModule": "vidaccel_train.data.datamodule",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
