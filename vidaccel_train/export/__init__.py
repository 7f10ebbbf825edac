from vidaccel_train.export.executorch import ExecuTorchModel, LoweredProgram, LoweringError, lower_to_executorch, write_atomic

__all__ = ["ExecuTorchModel", "LoweredProgram", "LoweringError", "lower_to_executorch", "write_atomic"]
