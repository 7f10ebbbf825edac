from vidaccel_train.training.module import VideoClassifier
from vidaccel_train.training.resilience import AtomicCheckpointIO, ResumableTraining

__all__ = ["AtomicCheckpointIO", "ResumableTraining", "VideoClassifier"]
