from vidaccel_train.training.module import VideoClassifier
from vidaccel_train.training.resilience import AtomicCheckpointIO, ResumableCSVLogger, ResumableTraining

__all__ = ["AtomicCheckpointIO", "ResumableCSVLogger", "ResumableTraining", "VideoClassifier"]
