from vidaccel_train.training.callbacks import PostTrainingQuantization, QuantizationAwareTraining
from vidaccel_train.training.module import VideoClassifier
from vidaccel_train.training.quant_state import QuantState
from vidaccel_train.training.resilience import AtomicCheckpointIO, ResumableCSVLogger, ResumableTraining

__all__ = [
    "AtomicCheckpointIO",
    "PostTrainingQuantization",
    "QuantState",
    "QuantizationAwareTraining",
    "ResumableCSVLogger",
    "ResumableTraining",
    "VideoClassifier",
]
