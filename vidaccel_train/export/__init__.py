from vidaccel_train.export.executorch import LoweredProgram, lower_to_executorch
from vidaccel_train.export.manifest import ArtifactRecord, Manifest
from vidaccel_train.export.runtime import ExecuTorchModel, load_verified, resolve_artifact

__all__ = [
    "ArtifactRecord",
    "ExecuTorchModel",
    "ExportCallback",
    "LoweredProgram",
    "Manifest",
    "export_artifacts",
    "load_verified",
    "lower_to_executorch",
    "resolve_artifact",
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
