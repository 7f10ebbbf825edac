from vidaccel_train.quantization.pt2e import convert_int8, prepare, set_fake_quant, set_observers

__all__ = [
    "convert_int8",
    "prepare",
    "set_fake_quant",
    "set_observers",
]
