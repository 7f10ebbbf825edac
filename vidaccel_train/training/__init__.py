from vidaccel_train.training.module import VideoClassifier

__all__ = ["VideoClassifier"]
