"""vidaccel_train: fine-tune efficient video classifiers and ship verified int8 mobile artifacts."""

__version__ = "0.1.0"
