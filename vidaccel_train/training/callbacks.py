"""Lightning callbacks that decide when a run quantizes; the module does the quantizing."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch.nn as nn
from lightning.pytorch.strategies import DDPStrategy

from vidaccel_train.errors import ConfigError, check_count, check_number
from vidaccel_train.training.quant_state import QuantState

log = logging.getLogger(__name__)

FLOAT_CHECKPOINT = "fp32.ckpt"
# Where the measurements behind the refusal of QAT from the first epoch on untrained weights are.
QAT_UNTRAINED_DOC = "docs/quantization-and-export.md#quantization-quant"


class QuantizationAwareTraining(L.Callback):
    """Fine-tune in fp32, then switch to QAT at ``start_epoch`` and freeze observers later.

    At ``start_epoch`` the network is replaced by its exported deploy form with fake
    quantization (BatchNorm folded into the convolutions, so its statistics are frozen from
    there on), and the optimizer restarts on the new parameters with the learning rate scaled
    by ``lr_scale``. From ``freeze_observer_epoch`` on, quantization ranges stop moving.
    ``start_epoch=0`` quantizes before training starts (QAT fine-tuning of a trained model);
    a negative one counts from the end of the ``max_epochs`` the run trains (``-1``: the last
    epoch is QAT, whatever ``max_epochs``). The schedule is checked here, when Hydra builds the
    callback (``conf/quant/qat.yaml`` hands it ``trainer.max_epochs`` and whether the model
    starts from trained weights), so a schedule that cannot work ends the command before any data
    is read or step trained.

    Low-resolution epochs (``data.low_res_epochs``) end where QAT starts: the quantized graph
    takes full-size clips. :meth:`setup` shortens them, with one log line, before the training
    loader is built.

    ``requantize_moved_values=True`` fake-quantizes sliced, joined and zeroed values again, as
    torchao's QAT does, instead of passing them through (the int8 program does not requantize
    them; see :func:`vidaccel_train.quantization.fake_quant.pass_through_moved_values`).

    Just before a mid-run switch the float model is saved as ``fp32.ckpt`` beside the run's
    other checkpoints (when it writes any): the starting point for fine-tuning on other classes
    (``model.checkpoint=<run dir>/checkpoints/fp32.ckpt``), which a quantized checkpoint cannot be.

    Under DDP the switch rebuilds the DDP wrapper around the new network, so the new
    parameters' gradients are averaged across ranks; DDP broadcasts rank 0's buffers before
    each forward, so every rank quantizes with the same observed ranges.

    Args:
        start_epoch: the first QAT epoch; negative counts from the end (``-1``: the last).
        freeze_observer_epoch: the first epoch with frozen quantization ranges; None: never.
        lr_scale: the learning-rate multiplier during QAT.
        requantize_moved_values: fake-quantize moved values again, as torchao.
        max_epochs: the epochs the run trains (``trainer.max_epochs``).
        trained_weights: whether training starts from trained weights (``model.checkpoint`` or
            ``model.pretrained``); QAT from the first epoch needs them.

    Raises:
        ConfigError: ``start_epoch``, ``freeze_observer_epoch`` or ``max_epochs`` not an integer
            (``max_epochs`` not positive); ``start_epoch`` at or past ``max_epochs`` (QAT would
            never run); QAT from the first epoch of a run of several on untrained weights;
            ``freeze_observer_epoch`` before the epoch QAT starts; ``lr_scale`` not a number
            above 0; ``trained_weights`` or ``requantize_moved_values`` not true or false; and, at
            :meth:`setup`, a ``max_epochs`` other than the trainer's.
    """

    def __init__(
        self,
        start_epoch: int = 1,
        freeze_observer_epoch: int | None = None,
        lr_scale: float = 0.1,
        requantize_moved_values: bool = False,
        *,
        max_epochs: int,
        trained_weights: bool = False,
    ):
        check_count("quant.start_epoch", start_epoch, None, "an integer epoch (-1: the last)")
        if freeze_observer_epoch is not None:
            check_count("quant.freeze_observer_epoch", freeze_observer_epoch, None, "an integer epoch or null")
        check_count(
            "quant.max_epochs", max_epochs, 1, "a positive integer (trainer.max_epochs, which qat.yaml passes on)"
        )
        for key, value in (("trained_weights", trained_weights), ("requantize_moved_values", requantize_moved_values)):
            if not isinstance(value, bool):
                raise ConfigError(f"quant.{key} must be true or false, got {value!r}")
        check_number("quant.lr_scale", lr_scale)
        if start_epoch >= max_epochs:
            raise ConfigError(
                f"quant.start_epoch={start_epoch} but trainer.max_epochs={max_epochs}: QAT would never run; "
                f"set quant.start_epoch below {max_epochs} (-1: the last epoch), or quant=none for fp32 only"
            )
        start = start_epoch if start_epoch >= 0 else max(0, max_epochs + start_epoch)
        if start == 0 and not trained_weights and max_epochs > 1:
            # One-epoch runs (trainer=debug, debug=*) exercise the code and learn little either way: allowed.
            said = (
                "quant.start_epoch=0"
                if start_epoch == 0
                else f"quant.start_epoch={start_epoch} with trainer.max_epochs={max_epochs}"
            )
            raise ConfigError(
                f"{said} starts QAT at the first epoch on untrained weights: QAT trains the deploy form, whose "
                "BatchNorm is folded into the convolutions, and an untrained network has no statistics to fold (it "
                f"stays at chance: see {QAT_UNTRAINED_DOC}). Start from trained weights "
                "(model.checkpoint=PATH or model.pretrained=true), or train in fp32 first: quant.start_epoch=N with "
                "N >= 1 (-1: the last epoch)"
            )
        if freeze_observer_epoch is not None and freeze_observer_epoch < start:
            raise ConfigError(
                f"quant.freeze_observer_epoch={freeze_observer_epoch} comes before QAT starts (epoch {start}): "
                f"set it to {start} or later, or quant.freeze_observer_epoch=null"
            )
        self.start_epoch = start  # resolved: the epoch QAT starts
        self.freeze_observer_epoch = freeze_observer_epoch
        self.lr_scale = lr_scale
        self.requantize_moved_values = requantize_moved_values
        self.max_epochs = max_epochs

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.fast_dev_run:
            # Lightning runs one short epoch whatever trainer.max_epochs says: make it the QAT
            # epoch, so the run exercises the quantized path (it learns nothing either way).
            self.start_epoch = 0
        elif trainer.max_epochs != self.max_epochs:
            raise ConfigError(
                f"quant.max_epochs={self.max_epochs} but the trainer runs {trainer.max_epochs} epochs: "
                "pass the callback the trainer's max_epochs (conf/quant/qat.yaml interpolates trainer.max_epochs)"
            )
        if hasattr(trainer.datamodule, "end_low_res_epochs_at"):  # low-resolution epochs end where QAT starts
            trainer.datamodule.end_low_res_epochs_at(self.start_epoch)
        if self.start_epoch == 0 and pl_module.quant_state is None:
            norms = [m for m in pl_module.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if norms and all(int(m.num_batches_tracked) == 0 for m in norms):
                log.warning(
                    "QAT from the first epoch on untrained weights: BatchNorm is folded without statistics, "
                    "so this run exercises the code but will not learn (start from model.checkpoint=PATH)"
                )
            # Before the strategy wraps and places the model: DDP and the optimizer see the QAT graph.
            pl_module.enter_quantization(self._state(trainer, start_step=0))

    def _state(self, trainer: L.Trainer, start_step: int) -> QuantState:
        """The state QAT starts in at ``start_step``: this run's clip shape and QAT settings."""
        return QuantState(
            "qat",
            trainer.datamodule.clip_shape,
            start_step=start_step,
            lr_scale=self.lr_scale,
            requantize_moved_values=self.requantize_moved_values,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if pl_module.quant_state is None and epoch >= self.start_epoch:
            if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
                float_checkpoint = Path(trainer.checkpoint_callback.dirpath) / FLOAT_CHECKPOINT
                trainer.save_checkpoint(
                    float_checkpoint, weights_only=True
                )  # weights to start from, not a resume point
                log.info("Epoch %d: saved the float model as %s", epoch, float_checkpoint)
            log.info("Epoch %d: switching to quantization-aware training", epoch)
            pl_module.enter_quantization(self._state(trainer, start_step=trainer.global_step))
            if isinstance(trainer.strategy, DDPStrategy):
                trainer.strategy.model = pl_module  # drop the wrapper of the replaced network
                trainer.strategy.configure_ddp()
            trainer.strategy.setup_optimizers(trainer)
        if (
            self.freeze_observer_epoch is not None
            and epoch >= self.freeze_observer_epoch
            and not pl_module.quant_state.observers_frozen
        ):
            log.info("Epoch %d: freezing quantization observers", epoch)
            pl_module.freeze_observers()


class PostTrainingQuantization(L.Callback):
    """Calibrate int8 ranges on ``calibration_batches`` training batches before testing.

    Runs on the checkpoint being tested (after fit: the best one), so the test metrics and the
    exported int8 program come from the same calibrated model.

    Raises:
        ConfigError: ``calibration_batches`` not a positive integer.
    """

    def __init__(self, calibration_batches: int = 16):
        check_count("quant.calibration_batches", calibration_batches)
        self.calibration_batches = calibration_batches

    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        if pl_module.quant_state is not None:
            return
        pl_module.enter_quantization(QuantState("ptq", trainer.datamodule.clip_shape))
        loader = trainer.datamodule.calibration_dataloader()
        pl_module.calibrate(loader, self.calibration_batches)
