"""What every image family's TrainingTask shares: the images, the digits figures each epoch, the checkpoint.

An image family (dcgan, diffusion) subclasses ImageTrainingTask with its model
object (what a checkpoint saves: `save`, `train_state`, `load`), its step and
its `sample`; the harness (gen_jobs.training.harness) drives it on Ray Train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gen_jobs.data.image_sources import check_source, load_images
from gen_jobs.quality.digits import DigitsReference, collapse_warnings, scorable


class CheckpointedModel(Protocol):
    """A family's trained state: its weights and optimisers, saved and loaded as one."""

    def save(self, folder: Path, info: dict) -> None: ...
    def train_state(self) -> dict: ...
    def load(self, folder: Path, state: dict) -> None: ...


class ImageTrainingTask:
    """The images and labels on every worker, rank 0's digits reference, the epoch's figures and the
    collapse verdict; the subclass supplies `model`, `train_step`, `modules` and `sample`."""

    def __init__(self, recipe: Any, workers: Any, model: CheckpointedModel):
        self.recipe, self.workers, self.model = recipe, workers, model
        images, labels = load_images(recipe.data, recipe.model.image_size, recipe.model.channels)
        if recipe.model.conditional and labels is None:
            raise ValueError(f"{recipe.data.source} has no labels: set model.conditional=false to train unconditionally")
        self.images = torch.from_numpy(images)  # N x C x S x S in [-1, 1]
        self.labels = torch.from_numpy(labels) if labels is not None else None  # N
        self.num_examples = len(self.images)
        self.reference = None
        if workers.rank == 0 and recipe.train.quality_samples and scorable(recipe):
            self.reference = DigitsReference(recipe.model.image_size, source=recipe.data.source)

    @staticmethod
    def prepare(recipe: Any) -> dict:
        check_source(recipe.data)  # fail fast, before any worker starts
        return {}

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images (B x C x S x S) and labels (B, or None) of a step's slice, on the worker's device."""
        device = self.workers.device
        labels = self.labels[indices].to(device) if self.labels is not None else None
        return self.images[indices].to(device), labels

    def sample(self, seeds: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The trained model's images (N x S x S x C uint8) for these seeds, and the labels they were drawn for."""
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """The training log's figures: the model's samples for fixed seeds, labels cycling 0..9."""
        if self.reference is None:
            return {}
        cfg = self.recipe.model
        seeds = np.arange(self.recipe.train.quality_samples, dtype=np.int64)
        labels = (seeds % cfg.num_classes) if cfg.conditional else None
        images, drawn = self.sample(seeds, labels)
        figures = self.reference.score(images, drawn if cfg.conditional else None, tstr=False)
        return figures.model_dump(exclude_none=True, exclude={"num_samples", "requested_classes"})

    def collapse(self, figures: dict) -> list[str]:
        """The mode-collapse warnings of an epoch's figures, significant for the samples scored."""
        if "classes_covered" not in figures:
            return []
        scored = {**figures, "num_samples": self.recipe.train.quality_samples}
        return [w for w in collapse_warnings(scored) if w.startswith("mode collapse")]

    def save(self, folder: Path, info: dict) -> None:
        self.model.save(folder, info)

    def train_state(self) -> dict:
        return self.model.train_state()

    def load(self, folder: Path, state: dict) -> None:
        self.model.load(folder, state)


def describe_digits_epoch(m: dict, epochs: int, losses: str) -> tuple[str, list[str]]:
    """An image family's training log line for one epoch (`losses` already formatted), and its warnings."""
    line = f"epoch {m['epoch']}/{epochs}  {losses}"
    if "classes_covered" in m:
        line += f"  classes {m['classes_covered']}/10  KL {m['kl_to_uniform']:.3f}  diversity {m['diversity']:.2f}"
        if "label_agreement" in m:
            line += f"  label agreement {m['label_agreement']:.2f}"
    line += f"  ({m['seconds']:.1f} s)"
    if "classes_covered" in m and m["epoch"] > epochs // 4:  # early epochs are expected to look unformed
        return line, [f"warning: {w}" for w in collapse_warnings(m)]
    return line, []
