"""LightningModule for clip classification."""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


class VideoClassifier(L.LightningModule):
    """Cross-entropy training of ``net`` on ``(B, C, T, H, W)`` clips with top-1/top-5 metrics.

    ``optimizer`` is a partial (Hydra ``_partial_: true``) taking the parameters. The learning
    rate warms up linearly for ``warmup_epochs`` then follows a cosine down to
    ``min_lr_ratio`` of its peak, stepped per batch.
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
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = MetricCollection(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.class_names: list[str] | None = None
        # The resolved run config, saved in every checkpoint so it can be resumed or exported alone.
        self.run_config: dict[str, Any] | None = None

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)

    def train(self, mode: bool = True):
        """Keeps BatchNorm statistics frozen when asked, whatever Lightning toggles."""
        super().train(mode)
        if mode and self.hparams.freeze_bn_stats:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "class_names", None):
            self.class_names = list(datamodule.class_names)

    def _step(self, batch: dict, metrics: MetricCollection, stage: str) -> torch.Tensor:
        logits = self(batch["video"])
        loss = self.criterion(logits, batch["label"])
        metrics.update(logits.detach(), batch["label"])
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(logits))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.test_metrics, "test")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup_steps = int(self.hparams.warmup_epochs * total_steps / epochs)
        floor = self.hparams.min_lr_ratio

        def lr_factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["class_names"] = self.class_names
        checkpoint["run_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.class_names = checkpoint.get("class_names")
        self.run_config = self.run_config or checkpoint.get("run_config")
