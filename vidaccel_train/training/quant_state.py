"""Where a run stands with quantization: one typed record, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vidaccel_train.models.deploy import REVISION
from vidaccel_train.quantization.pt2e import MODES


@dataclass
class QuantState:
    """The quantized state of a :class:`~vidaccel_train.training.VideoClassifier`.

    Saved in checkpoints as a plain dict under ``"quantization"`` (PyTorch's safe loader reads
    it; ``None`` for an fp32 model) and read back with :meth:`from_checkpoint`.

    Attributes:
        mode: ``qat`` (quantization-aware training) or ``ptq`` (post-training calibration).
        input_shape: ``(C, T, H, W)`` the deploy form was exported at.
        observers_frozen: whether quantization ranges have stopped moving.
        start_step: the global step QAT started at (the learning-rate schedule restarts there).
        lr_scale: the learning-rate multiplier during QAT.
        requantize_moved_values: fake-quantize sliced, joined and zeroed values again, as
            torchao's QAT does (see :func:`vidaccel_train.quantization.pt2e.prepare`).
        deploy_revision: the deploy form's revision the quantized graph was made from
            (:data:`vidaccel_train.models.deploy.REVISION`): its operators, and so its observers.
    """

    mode: str
    input_shape: tuple[int, int, int, int]
    observers_frozen: bool = False
    start_step: int = 0
    lr_scale: float = 1.0
    requantize_moved_values: bool = False
    deploy_revision: int = REVISION

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"quantization mode must be one of {MODES}, got {self.mode!r}")
        self.input_shape = tuple(int(n) for n in self.input_shape)

    def to_checkpoint(self) -> dict:
        return {**asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_checkpoint(cls, saved: dict) -> QuantState:
        """The state a checkpoint holds. Migrations: checkpoints written before
        ``requantize_moved_values`` existed requantized moved values (torchao's QAT), so a missing
        key reads as True; those written before ``deploy_revision`` existed hold a graph of
        revision 1. Unknown keys are ignored."""
        return cls(
            mode=saved["mode"],
            input_shape=saved["input_shape"],
            observers_frozen=bool(saved.get("observers_frozen", False)),
            start_step=int(saved.get("start_step", 0)),
            lr_scale=float(saved.get("lr_scale", 1.0)),
            requantize_moved_values=bool(saved.get("requantize_moved_values", True)),
            deploy_revision=int(saved.get("deploy_revision", 1)),
        )
