from vidaccel_train.export.executorch import ExecuTorchModel, LoweredProgram, lower_to_executorch, write_atomic

__all__ = [
    "ExecuTorchModel",
    "ExportCallback",
    "LoweredProgram",
    "export_artifacts",
    "lower_to_executorch",
    "write_atomic",
]


def __getattr__(name: str):
    # The export pipeline (PT2E, Lightning) on first use: running a program (predict) does not import it.
    if name == "export_artifacts":
        from vidaccel_train.export.artifacts import export_artifacts

        return export_artifacts
    if name == "ExportCallback":
        from vidaccel_train.export.callback import ExportCallback

        return ExportCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
