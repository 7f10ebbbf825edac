"""vidaccel_train: fine-tune efficient video classifiers and ship verified int8 mobile artifacts."""

from vidaccel_train.quiet import silence_third_party_noise

__version__ = "0.1.0"

# Before PyTorchVideo, torchao and Lightning are imported by any entry point (train, export, predict).
silence_third_party_noise()
