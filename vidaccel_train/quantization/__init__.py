from vidaccel_train.quantization.callbacks import PostTrainingQuantization, QuantizationAwareTraining
from vidaccel_train.quantization.pt2e import convert_int8, prepare, set_fake_quant, set_observers

__all__ = [
    "PostTrainingQuantization",
    "QuantizationAwareTraining",
    "convert_int8",
    "prepare",
    "set_fake_quant",
    "set_observers",
]
