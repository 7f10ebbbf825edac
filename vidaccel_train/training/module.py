"""LightningModule for clip classification, in fp32 or quantized (PT2E) form."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vidaccel_train.data.clips import aggregate_views
from vidaccel_train.errors import ConfigError, check_number
from vidaccel_train.models.deploy import to_deploy_form
from vidaccel_train.quantization import pt2e
from vidaccel_train.training.quant_state import QuantState
from vidaccel_train.training.reports import write_confusion_matrix

TEST_STAGES = ("test", "test_fp32")


def net_builder(run_config: dict) -> Callable[[], nn.Module]:
    """Builds a run's network afresh from its resolved config (architecture only: no weights are
    downloaded or read)."""
    from hydra.utils import instantiate

    net_config = {**run_config["model"]["net"], "pretrained": False, "checkpoint": None}
    return lambda: instantiate(net_config)


def _drop_int8_cache(module: VideoClassifier, incompatible_keys) -> None:
    module._int8_cache.clear()


class VideoClassifier(L.LightningModule):
    """Cross-entropy training of ``net`` on ``(B, C, T, H, W)`` clips with top-1/top-5 metrics.

    ``optimizer`` is a partial (Hydra ``_partial_: true``) taking the parameters. The learning
    rate warms up linearly for ``warmup_epochs`` then follows a cosine down to
    ``min_lr_ratio`` of its peak, stepped per batch. ``channels_last`` feeds the network
    channels-last clips and, once quantized, keeps the deploy form's weights channels-last
    (same numbers to float rounding, faster convolutions).

    Once quantized (:meth:`enter_quantization`), ``net`` is the exported deploy form with
    fake quantization or observers; validation then logs the quantized model as ``val/*`` and
    the same weights without quantization as ``val_fp32/*``, and testing runs the converted
    int8 model as ``test/*`` beside ``test_fp32/*``.

    Test batches hold every view of each video, ``(B, views, C, T, H, W)``: ``test/clip_top1``
    scores views alone, ``test/top1``, ``test/top5`` and ``test/mean_class_accuracy`` score the
    averaged video predictions, and a confusion matrix of those is written next to the run's
    outputs (``confusion_matrix_<stage>.png`` and ``.csv``).

    Raises:
        ConfigError: ``optimizer``'s ``lr`` not above 0, ``label_smoothing`` or ``min_lr_ratio``
            outside [0, 1], a negative ``warmup_epochs``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        label_smoothing: float = 0.0,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        freeze_bn_stats: bool = False,
        channels_last: bool = True,
    ):
        super().__init__()
        lr = getattr(optimizer, "keywords", {}).get("lr")  # a partial, as the optim configs give it
        if lr is not None:
            check_number("optim.lr", lr)
        for name, value in dict(label_smoothing=label_smoothing, min_lr_ratio=min_lr_ratio).items():
            if not 0 <= value <= 1:
                raise ConfigError(f"module.{name} must be in [0, 1], got {value!r}")
        if warmup_epochs < 0:
            raise ConfigError(f"module.warmup_epochs must be 0 or more, got {warmup_epochs!r}")
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        def accuracy(top_k: int, average: str = "micro") -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, top_k=min(top_k, num_classes), average=average)

        # compute_groups=False: torchmetrics would otherwise merge top-1 and top-5 into one state
        # whenever the first batch scores the same on both, and report top-1 as top-5 from then on.
        clip_metrics = MetricCollection({"top1": accuracy(1), "top5": accuracy(5)}, compute_groups=False)
        video_metrics = MetricCollection(
            {"top1": accuracy(1), "top5": accuracy(5), "mean_class_accuracy": accuracy(1, "macro")},
            compute_groups=False,
        )
        # Keyed "<stage>_metrics": nn.ModuleDict may not hold a key named "train".
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": clip_metrics.clone(prefix=f"{stage}/") for stage in ("train", "val", "val_fp32")}
        )
        for stage in TEST_STAGES:
            self.metrics[f"{stage}_metrics"] = video_metrics.clone(prefix=f"{stage}/")
            self.metrics[f"{stage}_clip_metrics"] = clip_metrics.clone(prefix=f"{stage}/clip_")
            self.metrics[f"{stage}_confusion"] = MulticlassConfusionMatrix(num_classes)
        self.class_names: list[str] | None = None
        # The resolved run config, saved in every checkpoint so it can be resumed or exported alone.
        self.run_config: dict[str, Any] | None = None
        # None in fp32; else where quantization stands (QuantState).
        self.quant_state: QuantState | None = None
        # The converted int8 model per device, kept out of the state_dict; dropped whenever the
        # weights or ranges may change: training mode, a loaded state dict, frozen observers.
        self._int8_cache: dict[str, nn.Module] = {}
        self.register_load_state_dict_post_hook(_drop_int8_cache)
        # Each test stage's logits, (videos, views, classes), when the whole test ran here in fp32
        # on the CPU: the export checks its programs against these instead of computing them again.
        self.test_logits: dict[str, torch.Tensor] = {}
        self._test_logit_batches: dict[str, list[torch.Tensor]] | None = None

    # ------------------------------------------------------------------ quantization

    def enter_quantization(self, state: QuantState) -> None:
        """Replace ``net`` by its deploy form prepared for ``state.mode`` (same device), as
        ``state`` says (its ``requantize_moved_values`` and ``deploy_revision``: see
        :func:`pt2e.prepare`), and keep ``state`` as :attr:`quant_state`.

        Raises:
            TypeError: ``state`` is not a :class:`QuantState`.
        """
        if not isinstance(state, QuantState):
            raise TypeError(f"enter_quantization takes a QuantState, got {type(state).__name__}")
        self.net = pt2e.prepare(
            self.net,
            state.input_shape,
            state.mode,
            channels_last=self.hparams.channels_last,
            requantize_moved_values=state.requantize_moved_values,
            deploy_revision=state.deploy_revision,
        )
        self.quant_state = state
        self.train(self.training)

    def fresh_train_form(self) -> nn.Module:
        """The run's network built afresh from its run config (architecture only: no weights
        are downloaded or read), in eval mode."""
        if self.run_config is None:
            raise RuntimeError("the module has no run config to rebuild its network from; use a checkpoint of ours")
        return net_builder(self.run_config)().eval()

    def float_deploy_form(self, num_frames: int) -> nn.Module:
        """The fp32 deploy form of the current weights, in eval mode.

        A quantized module holds an exported graph whose parameters keep the deploy form's
        names, so they load straight into a freshly built deploy form (quantization left out).
        """
        if self.quant_state is None:
            return to_deploy_form(self.net, num_frames)
        deployed = to_deploy_form(self.fresh_train_form(), num_frames)
        own = deployed.state_dict()
        trained = {k: v.detach().cpu() for k, v in self.net.state_dict().items() if k in own}
        missing = sorted(set(own) - set(trained))
        if missing:
            raise RuntimeError(f"the quantized graph lacks deploy-form weights {missing[:5]}")
        deployed.load_state_dict(trained)
        return deployed.eval()

    def freeze_observers(self) -> None:
        self.quant_state.observers_frozen = True
        pt2e.set_observers(self.net, False)
        self._int8_cache.clear()  # the ranges the cached conversion used may have moved since

    def calibrate(self, batches: Iterable[dict], count: int) -> None:
        """Post-training calibration: run ``count`` batches through the observers, then freeze."""
        pt2e.calibrate(self.net, batches, count)
        self.freeze_observers()

    def int8_net(self) -> nn.Module:
        """The converted int8 model of the current quantized state (cached until it changes)."""
        if self.quant_state is None:
            raise RuntimeError("the model is not quantized: run with quant=qat or quant=ptq")
        # Keyed by device: a model tested on a GPU and then exported on the CPU converts twice.
        key = str(self.device)
        if key not in self._int8_cache:
            self._int8_cache[key] = pt2e.convert_int8(self.net)
        return self._int8_cache[key]

    def train(self, mode: bool = True):
        """Keeps BatchNorm statistics frozen when asked, and observers only where they may learn."""
        super().train(mode)
        if mode and self.hparams.freeze_bn_stats:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.quant_state is not None:
            learning = mode and self.quant_state.mode == "qat" and not self.quant_state.observers_frozen
            pt2e.set_observers(self.net, learning)
            if mode:
                self._int8_cache.clear()
        return self

    def on_validation_model_train(self) -> None:
        """After validation Lightning would restore only each module's ``training`` flag, which
        leaves observers and frozen BatchNorm statistics as :meth:`train` (False) set them: a QAT
        run would stop learning its ranges at its first validation. Go through :meth:`train`."""
        self.trainer.model.train()

    # ------------------------------------------------------------------ steps

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self._run(self.net, video)

    def _run(self, net: nn.Module, video: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and video.dim() == 5:
            # oneDNN's 3-D convolutions are about twice as fast on channels-last clips (fp32 steps
            # on the CPU); the quantized deploy form has channels-last weights instead (prepare).
            video = video.contiguous(memory_format=torch.channels_last_3d)
        if self.quant_state is None:
            return net(video)
        # Quantization simulates int8 on fp32 values: a quantized graph runs in fp32 even under
        # mixed precision (bf16 would blur the ranges it learns and the int8 it predicts).
        with torch.autocast(video.device.type, enabled=False):
            return net(video.float())

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "class_names", None):
            self.class_names = list(datamodule.class_names)

    def _measure(self, logits: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        loss = self.criterion(logits, labels)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits.detach(), labels)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "val_fp32", batch_size=len(logits)
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage in ("val", "test"))
        return loss

    def _float_logits(self, video: torch.Tensor) -> torch.Tensor:
        """The quantized model's weights without quantization."""
        pt2e.set_fake_quant(self.net, False)
        try:
            return self(video)
        finally:
            pt2e.set_fake_quant(self.net, True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._measure(self(batch["video"]), batch["label"], "train")

    def _readable(self, batch: dict, stage: str) -> dict | None:
        """The batch without the videos that could not be read (see ``ClipDataset``), which
        every metric leaves out; their count is logged as ``<stage>/videos_left_out``. None when
        nothing is left."""
        valid = batch.get("valid")
        left_out = 0 if valid is None else int((~valid).sum())
        self.log(
            f"{stage}/videos_left_out",
            float(left_out),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            batch_size=len(batch["label"]),
        )
        if not left_out:
            return batch
        if left_out == len(valid):
            return None
        return {
            key: value[valid] if torch.is_tensor(value) and len(value) == len(valid) else value
            for key, value in batch.items()
        }

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        batch = self._readable(batch, "val")
        if batch is None:
            return
        self._measure(self(batch["video"]), batch["label"], "val")
        if self.quant_state is not None:
            self._measure(self._float_logits(batch["video"]), batch["label"], "val_fp32")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        batch = self._readable(batch, "test")
        if batch is None:
            return
        video, labels = batch["video"], batch["label"]
        videos, views = video.shape[:2]
        clips, clip_labels = video.flatten(0, 1), labels.repeat_interleave(views)
        if self.quant_state is None:
            predictors = {"test": self}
        else:
            int8_net = self.int8_net()
            predictors = {"test": lambda clips: self._run(int8_net, clips), "test_fp32": self._float_logits}
        for stage, predict in predictors.items():
            logits = predict(clips)
            self.log(f"{stage}/loss", self.criterion(logits, clip_labels), on_epoch=True, batch_size=len(logits))
            self.metrics[f"{stage}_clip_metrics"].update(logits, clip_labels)
            if self._test_logit_batches is not None:
                self._test_logit_batches[stage].append(logits.detach().float().view(videos, views, -1))
            probabilities = aggregate_views(logits.view(videos, views, -1))
            self.metrics[f"{stage}_metrics"].update(probabilities, labels)
            self.metrics[f"{stage}_confusion"].update(probabilities, labels)
            self.log_dict(self.metrics[f"{stage}_clip_metrics"], on_epoch=True)
            self.log_dict(self.metrics[f"{stage}_metrics"], on_epoch=True, prog_bar=stage == "test")

    def on_test_epoch_start(self) -> None:
        self.test_logits = {}
        # Only a whole, exact test is worth keeping: not a shard of one (DDP), not bf16 or GPU numbers.
        exact = (
            self.device.type == "cpu" and self.trainer.world_size == 1 and str(self.trainer.precision).startswith("32")
        )
        self._test_logit_batches = {stage: [] for stage in TEST_STAGES} if exact else None

    def on_test_epoch_end(self) -> None:
        if self._test_logit_batches is not None:
            self.test_logits = {
                stage: torch.cat(batches) for stage, batches in self._test_logit_batches.items() if batches
            }
            self._test_logit_batches = None
        for stage in TEST_STAGES:
            confusion = self.metrics[f"{stage}_confusion"]
            if confusion.update_count == 0:
                continue
            matrix = confusion.compute().cpu()
            confusion.reset()
            if self.trainer.is_global_zero:
                names = self.class_names or [str(i) for i in range(len(matrix))]
                write_confusion_matrix(matrix, names, Path(self.trainer.default_root_dir) / f"confusion_matrix_{stage}")

    # ------------------------------------------------------------------ optimization

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup_steps = int(self.hparams.warmup_epochs * total_steps / epochs)
        floor = self.hparams.min_lr_ratio
        # A QAT phase restarts the optimizer mid-run: keep the schedule's place, scale the rate.
        offset = self.quant_state.start_step if self.quant_state else 0
        scale = self.quant_state.lr_scale if self.quant_state else 1.0

        def lr_factor(step: int) -> float:
            step += offset
            if step < warmup_steps:
                return scale * (step + 1) / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return scale * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """A resumed fit runs on with the optimizer settings given now: Lightning restores the
        checkpoint's (learning rate, weight decay, ...) with the optimizer's state, and the
        schedule's base rate with the scheduler's. Unchanged settings are left untouched, so a
        resume with the same config stays exact."""
        if self.trainer.ckpt_path is None:
            return
        settings = dict(getattr(self.optimizer_factory, "keywords", {}))
        for config in self.trainer.lr_scheduler_configs:
            scheduler, optimizer = config.scheduler, config.scheduler.optimizer
            for index, group in enumerate(optimizer.param_groups):
                for key, value in settings.items():
                    if key == "lr" or key not in group:
                        continue
                    # betas: a list in the config, a tuple in the optimizer
                    group[key] = tuple(value) if isinstance(group[key], tuple) else value
                new_lr = settings.get("lr")
                if new_lr is None or group.get("initial_lr") == new_lr:
                    continue
                group["initial_lr"] = new_lr
                scheduler.base_lrs[index] = new_lr
                factor = scheduler.lr_lambdas[index](scheduler.last_epoch)  # configure_optimizers' LambdaLR
                group["lr"] = new_lr * factor

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["class_names"] = self.class_names
        checkpoint["run_config"] = self.run_config
        checkpoint["quantization"] = self.quant_state.to_checkpoint() if self.quant_state else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuilds the quantized graph a checkpoint was saved from, so its weights fit."""
        self.class_names = checkpoint.get("class_names")
        self.run_config = self.run_config or checkpoint.get("run_config")
        saved = checkpoint.get("quantization")
        state = QuantState.from_checkpoint(saved) if saved else None
        if state and self.quant_state is None:
            self.enter_quantization(state)
        elif state:  # already quantized: the graph fits, the state is the checkpoint's
            self.quant_state = state
            self.train(self.training)
        elif self.quant_state is not None:
            raise RuntimeError(
                "this checkpoint holds an fp32 model but the run is quantized; test or export an fp32 "
                "checkpoint without quant=..., or a checkpoint saved during quantization"
            )
