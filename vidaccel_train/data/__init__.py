from vidaccel_train.data.clips import ClipDataset, ClipSpec
from vidaccel_train.data.datamodule import VideoDataModule
from vidaccel_train.data.synthetic import SyntheticSpec, generate_dataset

__all__ = ["ClipDataset", "ClipSpec", "SyntheticSpec", "VideoDataModule", "generate_dataset"]
