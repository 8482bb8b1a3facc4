"""``data.augment``: random crops with padding and horizontal flips of each training batch, on the
device the batch already lives on.

Rows are images stored flat (C·H·W values, C order); a batch is viewed as N×C×H×W, augmented, and
handed back flat, so every arch sees what it would see without augmentation. Padding is zeros, which
after the per-channel normalization of image uploads is each channel's mean colour.

Every batch draws from a generator seeded by the job's seed and the global step alone: a run's
augmentation is reproducible from its seed, and a run resumed from a checkpoint draws exactly what
the uninterrupted run would have (the step is part of the checkpoint). Evaluation never augments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.spec import Augment

# Keeps this stream apart from the other generators seeded from the job seed (order, noise).
_STREAM = 0x9E3779B97F4A7C15
_MASK = 2**63 - 1


class Augmenter:
    def __init__(self, augment: Augment, input_shape: tuple[int, ...], seed: int) -> None:
        if len(input_shape) != 3:
            raise ValueError(
                f"data.augment: needs images (C, H, W); this dataset's rows have shape {input_shape}"
            )
        self.pad = augment.random_crop
        self.hflip = augment.hflip
        self.shape = tuple(input_shape)
        self.seed = seed

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(((self.seed + 1) * _STREAM + step) & _MASK)

    def __call__(self, X: torch.Tensor, step: int) -> torch.Tensor:
        """The batch ``X`` (rows flat) augmented with the draws of global step ``step``."""
        gen = self.generator(step, X.device)
        images = X.view(len(X), *self.shape)
        if self.pad:
            images = random_crop(images, self.pad, gen)
        if self.hflip:
            images = random_hflip(images, gen)
        return images.reshape(len(X), -1)


def random_crop(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Each image padded by ``pad`` zeros on every side, then cut back to H×W at its own offset."""
    b, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]  # (b, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]  # (b, 1, w)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indexing on (b, H+2p, W+2p, c) picks each image's window in one gather: (b, h, w, c).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(len(images), generator=gen, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def make_augmenter(
    augment: Augment | None, input_shape: tuple[int, ...] | None, seed: int
) -> Augmenter | None:
    """None when the spec asks for nothing (no augment, or random_crop 0 without hflip)."""
    if augment is None or (augment.random_crop == 0 and not augment.hflip):
        return None
    if input_shape is None:
        raise ValueError("data.augment: the dataset is not images; augment needs images")
    return Augmenter(augment, input_shape, seed)
