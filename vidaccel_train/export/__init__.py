from vidaccel_train.export.artifacts import export_artifacts
from vidaccel_train.export.callback import ExportCallback
from vidaccel_train.export.executorch import ExecuTorchModel, LoweredProgram, LoweringError, lower_to_executorch, write_atomic

__all__ = [
    "ExecuTorchModel",
    "ExportCallback",
    "LoweredProgram",
    "LoweringError",
    "export_artifacts",
    "lower_to_executorch",
    "write_atomic",
]
