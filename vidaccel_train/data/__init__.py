from vidaccel_train.data.clips import ClipContract, ClipDataset, Views
from vidaccel_train.data.synthetic import SyntheticSpec, generate_dataset

__all__ = ["ClipContract", "ClipDataset", "Views", "SyntheticSpec", "VideoDataModule", "generate_dataset"]


def __getattr__(name: str):
    # The LightningDataModule on first use: the reader, clips and layouts (predict, the dataset
    # tools) do not pay for importing Lightning.
    if name == "VideoDataModule":
        from vidaccel_train.data.datamodule import VideoDataModule

        return VideoDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
