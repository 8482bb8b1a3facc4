"""The training engine: one loop, short functions, everything the checklist asks for.

The loop keeps data on the device, samples batches by index, and reads values off the device once
per epoch (per-step losses and gradient norms go into preallocated device buffers). What happens
to the numbers (database, memory) is the ``Recorder``'s business, so the loop is testable alone.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.metrics import Point
from models.spec import CurriculumStage, JobSpec
from models.summary import RunSummary
from worker.augment import make_augmenter
from worker.data import Prepared, add_input_noise, corrupt_labels
from worker.graphed import GraphedEpochs, fused_optimizer, graphs_unavailable
from worker.nets import activation_sites, build_model, count_parameters, weight_parameters
from worker.precision import precision_for, use_channels_last
from worker.schedules import PlateauState, learning_rate


class StopTraining(Exception):
    """Raised inside the loop when the recorder asks to stop (cancel, time limit, lost lease)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Recorder(Protocol):
    def log(self, points: list[Point]) -> None: ...
    def epoch_end(self, epoch: int, step: int, progress: dict[str, Any]) -> None: ...
    def stop_reason(self) -> str | None: ...
    def save_checkpoint(
        self, kind: str, epoch: int, step: int, val_loss: float | None, payload: bytes
    ) -> None: ...
    def analyze(self, trainer: Trainer, epoch: int, reason: str) -> None: ...


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("resources.device is cuda but this worker has no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# torch.optim's fused kernels do a parameter's whole update in one kernel where the default CPU
# path runs several per parameter: at small batch sizes that is ~15% of an update on a CPU (see
# benchmarks/train_overhead.py). The same arithmetic, up to floating-point rounding.
CPU_FUSED_OPTIMIZERS = frozenset({"sgd", "adam", "adamw", "adagrad"})


def uses_fused_kernels(spec: JobSpec, device: torch.device | None) -> bool:
    if device is None:
        return False
    if device.type == "cpu":
        return spec.optimizer.name in CPU_FUSED_OPTIMIZERS
    return fused_optimizer(spec, device)


def make_optimizer(
    spec: JobSpec, params: list[nn.Parameter], device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The spec's optimizer, with fused kernels where torch has them for the device. On CUDA,
    sgd/adam/adamw also take the learning rate as a device tensor: graph-capturable, and the same
    kernels whether graphs are on or off."""
    o = spec.optimizer
    graphable = fused_optimizer(spec, device)
    lr: float | torch.Tensor = torch.tensor(o.lr, device=device) if graphable else o.lr
    extra: dict[str, Any] = {"fused": True} if uses_fused_kernels(spec, device) else {}
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay, **extra
        )
    if o.name in ("adam", "adamw"):
        kind = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        if graphable:
            extra["capturable"] = True
        return kind(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, **extra)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, momentum=o.momentum, eps=o.eps, weight_decay=o.weight_decay
        )
    return torch.optim.Adagrad(params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay, **extra)


@dataclass
class Stage:
    """One curriculum stage resolved to data: which training rows, with what corruption."""

    index: int
    first_epoch: int  # 0-based epoch at which it starts
    epochs: int
    X: torch.Tensor
    y: torch.Tensor
    lr: float | None


@dataclass
class EpochResult:
    """One epoch's per-update values: left on the device by ``train_epoch`` (the losses of every
    update, the per-tensor gradient norms of every ``grad_stats_stride``-th update, a row per measured
    update), then brought to the host once by ``read_epoch``."""

    stage: Stage
    losses: torch.Tensor
    norms: torch.Tensor
    lrs: list[float]
    losses_host: list[float] = field(default_factory=list)
    grad_norms_host: list[float] = field(default_factory=list)  # the total norm of each measured update
    layer_sq: np.ndarray | None = None  # per weight tensor: the sum over measured updates of its norm²


@dataclass
class TrainState:
    """Everything besides weights and optimizer that an exact resume needs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # updates completed
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    plateau: PlateauState = field(default_factory=PlateauState)
    diverged_step: int | None = None
    stopped_early: bool = False


def easiness_order(X: np.ndarray, y: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """Training rows from easiest to hardest, for curriculum stages.

    "Easy" is judged by a reference model that needs no training loop: a ridge regression fitted in
    closed form on the clean training split (one-hot targets for classes). A row is easier the smaller
    its reference loss: for classes, the larger the margin of its true class over the best other
    class; for regression, the smaller its squared residual. Ties keep file order.
    """
    A = np.hstack([X.astype(np.float64), np.ones((len(X), 1))])
    T = np.eye(n_classes)[y] if task == "classification" else y.reshape(-1, 1).astype(np.float64)
    W = np.linalg.solve(A.T @ A + 1e-3 * np.eye(A.shape[1]), A.T @ T)
    scores = A @ W
    if task == "classification":
        true = scores[np.arange(len(y)), y]
        scores[np.arange(len(y)), y] = -np.inf
        difficulty = -(true - scores.max(axis=1))
    else:
        difficulty = (scores[:, 0] - y) ** 2
    return np.argsort(difficulty, kind="stable")


class Trainer:
    UNIT_SAMPLE = 512  # training rows on which unit statistics are measured each epoch
    # Rows per forward pass in evaluation. On a CPU, 512-row chunks (activations of 512 KiB for a
    # 256-wide layer, within a core's L2) made a digits run at batch 256, where evaluation is ~40%
    # of the time, ~10% faster than one 1,077-row pass (benchmarks/README.md). A GPU wants big ones.
    EVAL_CHUNK_CPU = 512
    EVAL_CHUNK_ACCELERATOR = 8192

    @staticmethod
    def grad_stats_stride(updates_per_epoch: int) -> int:
        """Gradient norms are measured on every k-th update of an epoch (always its first): every
        16th, and at most 32 per epoch. The epoch means the rules read are as good from a sample,
        and the measurement (a norm per tensor, ~20 µs on this CPU for an MLP 64-256-256-10, about
        a tenth of a batch-1 update) then costs under 1% of training at any batch size."""
        return max(16, math.ceil(updates_per_epoch / 32))

    def __init__(self, spec: JobSpec, data: Prepared, recorder: Recorder, device: torch.device) -> None:
        self.spec = spec
        self.data = data
        self.recorder = recorder
        self.device = device
        self.precision = precision_for(spec.resources.precision, device)
        self.model = build_model(
            spec.model, data.X_train.shape[1], data.n_outputs, data.input_shape, spec.seed
        ).to(device)
        self.channels_last = use_channels_last(self.model, device)
        self.n_params = count_parameters(self.model)
        self.weights = [p for _, p in weight_parameters(self.model)]
        self.weight_names: list[str] = []
        self.trainable: list[nn.Parameter] = []
        self.weight_slots: list[int] = []
        self.graphs: GraphedEpochs | None = None
        self._lr_set: float | None = None  # the learning rate the optimizer holds now
        self.optimizer = self.reset_optimizer()
        self.state = TrainState()
        # Batch order and gradient noise draw from their own generators so they replay on resume.
        self.order_gen = torch.Generator().manual_seed(spec.seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
        self.train_X = self._tensor(data.X_train)
        self.train_y = self._target(data.y_train)
        self.eval_sets = {
            split: (self._tensor(X), self._target(y))
            for split, X, y in (
                ("train", data.X_train, data.y_train),
                ("val", data.X_val, data.y_val),
                ("test", data.X_test, data.y_test),
            )
            if len(y) > 0
        }
        self.stages = self._build_stages()
        # data.augment: each training batch cropped and flipped on the device (worker.augment).
        self.augment = make_augmenter(spec.data.augment, data.input_shape, spec.seed)
        self.eval_chunk = self.EVAL_CHUNK_CPU if device.type == "cpu" else self.EVAL_CHUNK_ACCELERATOR
        self.timing = {"epoch_seconds": 0.0, "updates": 0}
        if graphs_unavailable(spec, device) is None:
            self.graphs = GraphedEpochs(self)

    # ----- setup -------------------------------------------------------------------------------
    def reset_optimizer(self) -> torch.optim.Optimizer:
        """(Re)build the optimizer over the trainable parameters; call after freezing layers."""
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        slot = {id(p): i for i, p in enumerate(self.trainable)}
        # Positions of the weight tensors among the gradients, for per-layer gradient norms.
        self.weight_slots = [slot[id(w)] for w in self.weights if id(w) in slot]
        self.weight_names = [n for n, w in weight_parameters(self.model) if id(w) in slot]
        self.optimizer = make_optimizer(self.spec, self.trainable, self.device)
        self._lr_set = None
        if self.graphs is not None:
            self.graphs.reset()
        return self.optimizer

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=self.device)

    def _target(self, y: np.ndarray) -> torch.Tensor:
        if self.data.task == "classification":
            return torch.as_tensor(y, dtype=torch.long, device=self.device)
        return torch.as_tensor(y, dtype=torch.float32, device=self.device).reshape(-1, 1)

    def _build_stages(self) -> list[Stage]:
        if not self.spec.curriculum:
            return [Stage(0, 0, self.spec.epochs, self.train_X, self.train_y, None)]
        order = easiness_order(self.data.X_train, self.data.y_train, self.data.task, self.data.n_classes)
        stages, first = [], 0
        for i, cfg in enumerate(self.spec.curriculum):
            stages.append(self._stage(i, first, cfg, order))
            first += cfg.epochs
        return stages

    def _stage(self, index: int, first: int, cfg: CurriculumStage, order: np.ndarray) -> Stage:
        keep = np.sort(order[: max(1, int(round(cfg.fraction * len(order))))])
        rng = np.random.default_rng(self.spec.seed + 100 + index)
        n_classes = self.data.n_classes if self.data.task == "classification" else 0
        y = corrupt_labels(self.data.y_train[keep], cfg.label_noise, n_classes, rng)
        X = add_input_noise(self.data.X_train[keep], cfg.input_noise, rng)
        return Stage(index, first, cfg.epochs, self._tensor(X), self._target(y), cfg.lr)

    def stage_at(self, epoch: int) -> Stage:
        for stage in self.stages:
            if epoch < stage.first_epoch + stage.epochs:
                return stage
        return self.stages[-1]

    # ----- the loss ----------------------------------------------------------------------------
    def data_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.data.task == "classification":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, y)

    def l2_penalty(self) -> torch.Tensor:
        """½γΣw² over weights only (biases and norm parameters excluded, see nets.weight_parameters)."""
        return 0.5 * self.spec.regularization.l2 * sum(w.pow(2).sum() for w in self.weights)

    # ----- one epoch ---------------------------------------------------------------------------
    def batch_order(self, n: int) -> torch.Tensor:
        if self.spec.data.shuffle:
            return torch.randperm(n, generator=self.order_gen).to(self.device)
        return torch.arange(n, device=self.device)

    def add_gradient_noise(self, step: int) -> None:
        """g ← g + N(0, σ_t²) with σ_t = c / (1 + t)^r, t the global step."""
        noise = self.spec.regularization.gradient_noise
        sigma = noise.c / (1 + step) ** noise.r
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.add_(
                    torch.randn(p.grad.shape, generator=self.noise_gen, device=self.device), alpha=sigma
                )

    def check_stop(self) -> None:
        reason = self.recorder.stop_reason()
        if reason:
            raise StopTraining(reason)

    def set_lr(self, lr: float) -> float:
        """Give every parameter group this learning rate (a device tensor is filled only on change)."""
        if lr != self._lr_set:
            for group in self.optimizer.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
            self._lr_set = lr
        return lr

    def train_epoch(self, epoch: int) -> EpochResult:
        stage = self.stage_at(epoch)
        if self.graphs is not None:
            return EpochResult(stage, *self.graphs.train_epoch(epoch, stage))
        bs = self.spec.batch_size
        n = len(stage.y)
        n_steps = math.ceil(n / bs)
        order = self.batch_order(n)
        losses: list[torch.Tensor] = []  # stacked once at the end: cheaper than a write per update
        stride = self.grad_stats_stride(n_steps)
        norms_buf = torch.zeros(math.ceil(n_steps / stride), len(self.trainable), device=self.device)
        lrs = self.epoch_learning_rates(epoch, n_steps, stage)
        diagnostics = self.spec.analysis.diagnostics
        self.model.train()
        for i in range(n_steps):
            self.check_stop()
            self.set_lr(lrs[i])
            idx = order[i * bs : (i + 1) * bs]
            row = i // stride if diagnostics and i % stride == 0 else None
            measure = None if row is None else lambda grads, row=row: norms_buf[row].copy_(grads)
            X = stage.X[idx] if self.augment is None else self.augment(stage.X[idx], self.state.step)
            losses.append(self.update(X, stage.y[idx], measure).detach())
            self.state.step += 1
        return EpochResult(stage, torch.stack(losses), norms_buf, lrs)

    def update(
        self, X: torch.Tensor, y: torch.Tensor, measure: Callable[[torch.Tensor], Any] | None = None
    ) -> torch.Tensor:
        """One update on the batch (X, y): the loss (with the L2 penalty), its gradient, gradient noise,
        ``measure`` given the per-tensor gradient norms (two kernels, reduced once an epoch), clipping
        and the optimizer's step. Returns the batch's data loss. The eager loop and the CUDA graph
        capture (``worker.graphed``) both run exactly this."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.data_loss(self.model(X).float(), y)
        total = loss + self.l2_penalty() if self.spec.regularization.l2 > 0 else loss
        scaler = self.precision.scaler  # fp16 only
        if scaler is None:
            total.backward()
        else:  # unscaled at once: noise, norms and clipping below read the true gradients
            scaler.scale(total).backward()
            scaler.unscale_(self.optimizer)
        if self.spec.regularization.gradient_noise.c > 0:
            self.add_gradient_noise(self.state.step)
        if measure is not None:
            measure(torch.stack(torch._foreach_norm([p.grad for p in self.trainable if p.grad is not None])))
        if self.spec.regularization.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.regularization.grad_clip)
        if scaler is None:
            self.optimizer.step()
        else:  # skips the step when the scaled gradients overflowed, and adapts the scale
            scaler.step(self.optimizer)
            scaler.update()
        return loss

    def read_epoch(self, result: EpochResult) -> None:
        """Bring an epoch's per-update values to the host in one read, and reduce them there: a few
        NumPy operations on a few hundred numbers cost less than as many device kernels."""
        losses, norms = result.losses, result.norms
        host = torch.cat([losses, norms.flatten()]).cpu().numpy().astype(np.float64)
        result.losses_host = host[: len(losses)].tolist()
        squares = np.square(host[len(losses) :].reshape(tuple(norms.shape)))
        result.grad_norms_host = np.sqrt(squares.sum(axis=1)).tolist()
        result.layer_sq = squares[:, self.weight_slots].sum(axis=0)

    def lr_for(self, epoch: float, stage: Stage) -> float:
        base = stage.lr if stage.lr is not None else self.spec.optimizer.lr
        return learning_rate(self.spec.schedule, base, epoch, self.spec.epochs, self.state.plateau)

    def epoch_learning_rates(self, epoch: int, n_steps: int, stage: Stage) -> list[float]:
        """The rate of each update of an epoch, computed before it starts (the plateau state, the
        only input that depends on training, changes between epochs)."""
        schedule = self.spec.schedule
        if schedule.name in ("constant", "plateau") and epoch >= schedule.warmup_epochs:
            return [self.lr_for(epoch, stage)] * n_steps  # the same rate all epoch
        return [self.lr_for(epoch + i / n_steps, stage) for i in range(n_steps)]

    # ----- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss (and accuracy) of every split in eval mode: dropout off, norm layers on running stats.
        Unit statistics ride along on the training split's first forward pass (no extra pass).

        Sums stay on the device and are divided on the host after the one read: each small tensor
        operation costs microseconds on a CPU, and at large batch sizes (few updates an epoch) the
        evaluation is a large share of a run."""
        self.model.eval()
        names: list[str] = []
        sums: list[torch.Tensor] = []
        divisors: list[int] = []
        units: dict[str, torch.Tensor] = {}
        classification = self.data.task == "classification"
        for split, (X, y) in self.eval_sets.items():
            loss_sum, hits = self._split_sums(split, X, y, units)
            names.append(f"{split}/loss")
            sums.append(loss_sum)
            divisors.append(len(y))
            if classification:
                names.append(f"{split}/accuracy")
                sums.append(hits)
                divisors.append(len(y))
        extras = {"train/l2_penalty": self.l2_penalty()} if self.spec.regularization.l2 > 0 else {}
        for name, value in (extras | units).items():
            names.append(name)
            sums.append(value)
            divisors.append(1)
        host = torch.stack(sums).tolist()
        return {name: v / d for name, v, d in zip(names, host, divisors, strict=True)}

    def _split_sums(
        self, split: str, X: torch.Tensor, y: torch.Tensor, units: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A split's summed loss and correct-prediction count (None for regression), by chunks of
        ``eval_chunk`` rows."""
        loss_sum: torch.Tensor | None = None
        hits: torch.Tensor | None = None
        chunk = self.eval_chunk
        for start in range(0, len(y), chunk):
            watch = split == "train" and start == 0 and self.spec.analysis.diagnostics
            with self.measure_units(units) if watch else contextlib.nullcontext(), self.precision.autocast():
                out = self.model(X[start : start + chunk]).float()
            target = y[start : start + chunk]
            if self.data.task == "classification":
                loss = F.cross_entropy(out, target, reduction="sum")
                correct = (out.argmax(1) == target).sum()
                hits = correct if hits is None else hits + correct
            else:
                loss = F.mse_loss(out, target, reduction="sum")
            loss_sum = loss if loss_sum is None else loss_sum + loss
        assert loss_sum is not None  # eval_sets holds non-empty splits only
        return loss_sum, hits

    @contextlib.contextmanager
    def measure_units(self, stats: dict[str, torch.Tensor]):  # noqa: ANN201
        """Unit statistics of each hidden layer, taken from its activation output on the first
        UNIT_SAMPLE rows as the forward pass runs. Only the statistics are kept: a view of the
        activation would keep the whole output alive and make the next pass allocate afresh."""

        def hook_for(name: str):  # noqa: ANN202
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                stats.update(self.unit_statistics(name, output[: self.UNIT_SAMPLE]))

            return hook

        hooks = [m.register_forward_hook(hook_for(name)) for name, m in activation_sites(self.model)]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def unit_statistics(self, name: str, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """For one hidden layer: the fraction of dead units (never active on a fixed sample of training
        rows) and of saturated units (a sigmoid/tanh output pinned near its limits on ≥ 90% of rows).
        A convolution's unit is a channel: dead when inactive at every position of every row,
        saturated when pinned on ≥ 90% of (row, position) pairs."""
        kind = self.spec.model.activation
        dims = (0, 2, 3) if out.dim() == 4 else (0,)
        if kind in ("relu", "leaky_relu", "gelu"):  # never above 0: amax is 7x cheaper than all()
            return {f"units/{name}/dead_fraction": (out.amax(dim=dims) <= 0).float().mean()}
        if kind in ("sigmoid", "tanh"):  # outside (0.02, 0.98), resp. (-0.98, 0.98)
            center, half = (0.5, 0.48) if kind == "sigmoid" else (0.0, 0.98)
            pinned = ((out - center).abs() > half).float().mean(dim=dims)
            return {f"units/{name}/saturated_fraction": (pinned >= 0.9).float().mean()}
        return {}

    # ----- the run -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from ``self.state`` (fresh or restored) to the end; returns the summary."""
        spec = self.spec
        if self.state.epoch == 0 and self.state.step == 0:
            self.log_epoch(0, self.evaluate(), None, 0.0)
            self.recorder.epoch_end(0, 0, self.progress(0, None))
            if spec.analysis.hessian.enabled:  # curvature at init: the learning rate's stable limit
                self.recorder.analyze(self, 0, "initial")
        while self.state.epoch < spec.epochs and not self.state.stopped_early:
            epoch = self.state.epoch
            start = time.perf_counter()
            first_step = self.state.step
            result = self.train_epoch(epoch)
            metrics = self.evaluate()
            seconds = time.perf_counter() - start
            self.state.epoch = epoch + 1
            self.timing["epoch_seconds"] += seconds
            self.timing["updates"] += self.state.step - first_step
            self.read_epoch(result)
            self.log_steps(first_step, result)
            self.log_epoch(self.state.epoch, metrics, result, seconds)
            if self.check_divergence(first_step, result, metrics):
                break
            self.after_epoch(metrics)
        return self.finish()

    def check_divergence(self, first_step: int, result: EpochResult, metrics: dict[str, float]) -> bool:
        """A NaN or infinite minibatch loss, sampled gradient norm or epoch metric ends the run as
        diverged, at the first update that showed it (the epoch's last when only the evaluation did)."""
        losses = result.losses_host
        stride = self.grad_stats_stride(len(losses))
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        bad += [k * stride for k, g in enumerate(result.grad_norms_host) if not math.isfinite(g)]
        if not bad and all(math.isfinite(v) for v in metrics.values()):
            return False
        self.state.diverged_step = first_step + (min(bad) + 1 if bad else len(losses))
        self.recorder.epoch_end(self.state.epoch, self.state.step, self.progress(self.state.epoch, metrics))
        return True

    def after_epoch(self, metrics: dict[str, float]) -> None:
        """Model selection, schedule, early stopping and checkpoints, all on validation loss."""
        epoch, spec = self.state.epoch, self.spec
        val = metrics.get("val/loss", metrics["train/loss"])
        improved = val < self.state.best_val - (
            spec.regularization.early_stopping.min_delta if spec.regularization.early_stopping else 0.0
        )
        if improved:
            self.state.best_val, self.state.best_epoch, self.state.bad_epochs = val, epoch, 0
        else:
            self.state.bad_epochs += 1
        if spec.schedule.name == "plateau":
            self.state.plateau.update(spec.schedule, val)
        es = spec.regularization.early_stopping
        if es and self.state.bad_epochs >= es.patience:
            self.state.stopped_early = True
        if improved and spec.checkpoints.keep_best:
            self.recorder.save_checkpoint("best", epoch, self.state.step, val, self.checkpoint_bytes())
        if epoch % spec.checkpoints.every_epochs == 0 and epoch < spec.epochs:
            self.recorder.save_checkpoint("periodic", epoch, self.state.step, val, self.checkpoint_bytes())
        hessian = spec.analysis.hessian
        if (
            hessian.enabled
            and hessian.every_epochs
            and epoch % hessian.every_epochs == 0
            and epoch < spec.epochs
        ):
            self.recorder.analyze(self, epoch, "periodic")
        self.recorder.epoch_end(epoch, self.state.step, self.progress(epoch, metrics))

    def finish(self) -> dict[str, Any]:
        epoch = self.state.epoch
        val = None if self.state.diverged_step else self.state.best_val
        self.recorder.save_checkpoint("last", epoch, self.state.step, val, self.checkpoint_bytes())
        if self.spec.analysis.hessian.enabled and self.state.diverged_step is None:
            self.recorder.analyze(self, epoch, "final")
        return self.summary()

    # ----- logging -----------------------------------------------------------------------------
    def log_steps(self, first_step: int, result: EpochResult) -> None:
        """Per-update series: learning rate, minibatch loss and gradient norm (after ``read_epoch``)."""
        epoch0 = self.state.epoch - 1
        n = len(result.lrs)
        points = []
        for i, (lr, loss) in enumerate(zip(result.lrs, result.losses_host, strict=True)):
            step, ep = first_step + i + 1, epoch0 + (i + 1) / n
            points += [Point("train/lr", step, ep, lr), Point("train/batch_loss", step, ep, loss)]
        if self.spec.analysis.diagnostics:
            stride = self.grad_stats_stride(n)
            points += [
                Point("train/batch_grad_norm", first_step + k * stride + 1, epoch0 + (k * stride + 1) / n, g)
                for k, g in enumerate(result.grad_norms_host)
            ]
        self.recorder.log(points)

    def log_epoch(
        self, epoch: int, metrics: dict[str, float], result: EpochResult | None, seconds: float
    ) -> None:
        step = self.state.step
        values = dict(metrics)
        if result is not None:
            losses = np.asarray(result.losses_host)
            gnorms = np.asarray(result.grad_norms_host)
            finite = losses[np.isfinite(losses)]
            values |= {
                "train/data_loss": float(finite.mean()) if len(finite) else math.nan,
                "train/batch_loss_std": float(finite.std()) if len(finite) else math.nan,
                "train/lr_epoch": result.lrs[-1],
                "time/epoch_seconds": seconds,
                "time/update_ms": 1000 * seconds / max(1, len(losses)),
            }
            if self.spec.curriculum:
                values["curriculum/stage"] = float(result.stage.index)
            if self.spec.analysis.diagnostics:
                values["train/grad_norm"] = float(gnorms.mean())
                layer_norms = np.sqrt(result.layer_sq / max(1, len(gnorms))).tolist()
                values |= {f"grad/{name}": v for name, v in zip(self.weight_names, layer_norms, strict=True)}
        self.recorder.log([Point(name, step, float(epoch), v) for name, v in values.items()])

    def progress(self, epoch: int, metrics: dict[str, float] | None) -> dict[str, Any]:
        elapsed = self.timing["epoch_seconds"]
        done = max(1, epoch)
        eta = elapsed / done * (self.spec.epochs - epoch) if epoch else None
        out: dict[str, Any] = {
            "epoch": epoch,
            "epochs": self.spec.epochs,
            "step": self.state.step,
            "fraction": epoch / self.spec.epochs,
            "eta_seconds": eta,
        }
        if metrics:
            out |= {
                k.replace("/", "_"): v
                for k, v in metrics.items()
                if k.endswith("loss") or k.endswith("accuracy")
            }
        return out

    def run_summary(self) -> RunSummary:
        updates = max(1, self.timing["updates"])
        return RunSummary(
            epochs_run=self.state.epoch,
            steps=self.state.step,
            best_epoch=self.state.best_epoch,
            best_val_loss=self.state.best_val if math.isfinite(self.state.best_val) else None,
            stopped_early=self.state.stopped_early,
            diverged_step=self.state.diverged_step,
            n_parameters=self.n_params,
            device=str(self.device),
            seconds_per_epoch=self.timing["epoch_seconds"] / max(1, self.state.epoch),
            ms_per_update=1000 * self.timing["epoch_seconds"] / updates,
            data=self.data.info,
            layer_sizes={name: w.numel() for name, w in weight_parameters(self.model)},
        )

    def summary(self) -> dict[str, Any]:
        """``run_summary`` as the JSON a jobs row keeps (what ``fit`` returns)."""
        return self.run_summary().as_row()

    # ----- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order_rng": self.order_gen.get_state(),
            "noise_rng": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "position": {"epoch": s.epoch, "step": s.step},
            "train_state": {
                "best_val": s.best_val,
                "best_epoch": s.best_epoch,
                "bad_epochs": s.bad_epochs,
                "plateau": s.plateau.to_dict(),
                "stopped_early": s.stopped_early,
            },
            "scaler": self.data.scaler.to_dict(),
            "arch": describe_architecture(self.model),
            "grad_scaler": self.precision.scaler.state_dict() if self.precision.scaler else {},
        }

    def checkpoint_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.checkpoint_state(), buffer)
        return buffer.getvalue()

    def restore(self, payload: bytes) -> None:
        """Resume exactly where a checkpoint left off (same device and deterministic mode)."""
        state = load_checkpoint(payload)
        self.model.load_state_dict(state["model"])
        built = [{k: g[k] for k in ("fused", "capturable") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flags in zip(self.optimizer.param_groups, built, strict=True):
            group.update(flags)  # this device's kernels, whatever device wrote the checkpoint
        self._device_learning_rates()
        if self.graphs is not None:
            self.graphs.reset()
        if self.precision.scaler is not None and state.get("grad_scaler"):
            self.precision.scaler.load_state_dict(state["grad_scaler"])
        self.order_gen.set_state(state["order_rng"])
        self.noise_gen.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        t = state["train_state"]
        self.state = TrainState(
            epoch=state["position"]["epoch"],
            step=state["position"]["step"],
            best_val=t["best_val"],
            best_epoch=t["best_epoch"],
            bad_epochs=t["bad_epochs"],
            plateau=PlateauState(**t["plateau"]),
            stopped_early=t["stopped_early"],
        )

    def _device_learning_rates(self) -> None:
        """A loaded optimizer state brings its learning rates as CPU tensors (map_location="cpu") or
        floats: fused CUDA kernels need a tensor on the device, anything else a float."""
        on_device = fused_optimizer(self.spec, self.device)
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if on_device else lr
        self._lr_set = None


def load_checkpoint(payload: bytes) -> dict[str, Any]:
    """Checkpoints are loaded with weights_only=True: a planted pickle cannot run code."""
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def describe_architecture(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}
