"""Whole-update CUDA graphs for the training loop.

A small model on a GPU is paced by kernel launches, not arithmetic: an eager update of an MLP
64-256-256-10 issues a few dozen kernels and costs ~1 ms at every batch size from 1 to 4,096, almost
all of it host time. Captured once as a CUDA graph, the whole update (batch gather, forward, loss,
backward, gradient statistics, clipping, optimizer step, loss bookkeeping) is one launch.

What makes the captured update identical to the eager one:

* Every update, eager or replayed, runs the same function (``GraphedEpochs._update``), which reads
  the step's position from a device counter and gathers its batch with ``index_select`` from a
  permutation buffer, so nothing in it depends on a host value that changes between updates.
* The optimizer is the fused CUDA implementation with the learning rate as a device tensor (filled
  before an update whenever the schedule changes it); eager CUDA runs use the same optimizer, so
  graphs on and off run the same kernels (``benchmarks/train_overhead.py --check-graphs`` compares).
* The first ``WARMUP_UPDATES`` updates of a stage run eagerly on a side stream (CUDA's recipe: lazy
  initialization — optimizer state, library handles — must not happen inside a capture); they are
  real training updates, not throw-away ones, so nothing has to be undone. Then full batches and
  the epoch's smaller last batch are captured, each shape once, as they come.

Graphs are used only where a replay is exact: no dropout (its masks would come from a different
random stream), no gradient noise (its own generator), no fp16 (its gradient scaler decides on the
host whether to step), and an optimizer with a fused, capturable CUDA kernel (sgd, adam, adamw).
Everything else trains eagerly, as it does on a CPU. bf16 autocast is captured (with the weight-cast
cache off, eager and replayed updates cast alike), and so is batch norm in training mode: its batch
statistics and running-average updates are device kernels with no host value, so the resnets are
graphed too (``benchmarks/resnet.py --check-graphs`` compares a ResNet-18 both ways on a GPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from models.spec import JobSpec

if TYPE_CHECKING:
    from worker.training import Stage, Trainer

log = logging.getLogger("saddle.worker")

GRAPH_OPTIMIZERS = frozenset({"sgd", "adam", "adamw"})
WARMUP_UPDATES = 1


def fused_optimizer(spec: JobSpec, device: torch.device | None) -> bool:
    """Fused CUDA optimizer kernels with a device learning rate: what a graph can capture."""
    return device is not None and device.type == "cuda" and spec.optimizer.name in GRAPH_OPTIMIZERS


def graphs_unavailable(spec: JobSpec, device: torch.device) -> str | None:
    """Why this job's updates cannot be CUDA graphs (None when they can)."""
    if device.type != "cuda":
        return "not a CUDA device"
    if not spec.resources.cuda_graphs:
        return "resources.cuda_graphs is off"
    if spec.data.augment is not None:
        return "data.augment draws each batch's crops and flips from a generator seeded per step"
    if spec.optimizer.name not in GRAPH_OPTIMIZERS:
        return f"optimizer {spec.optimizer.name} has no fused CUDA kernel"
    dropout = spec.model.dropout if isinstance(spec.model.dropout, list) else [spec.model.dropout]
    if any(rate > 0 for rate in dropout):
        return "dropout masks would differ from eager mode"
    if spec.regularization.gradient_noise.c > 0:
        return "gradient noise draws from its own generator"
    if spec.resources.precision == "fp16":
        return "fp16's gradient scaler reads its overflow check on the host every update"
    return None


@dataclass
class _StageBuffers:
    """Static tensors one stage's graph reads and writes; they live as long as the graph."""

    stage_index: int
    order: torch.Tensor  # this epoch's permutation of the stage's rows
    steps: torch.Tensor  # arange(updates per epoch)
    measured: torch.Tensor  # the updates whose gradient norms are kept: every grad_stats_stride-th
    losses: torch.Tensor  # (updates per epoch,) minibatch data loss
    norms: torch.Tensor  # (measured updates, trainable tensors) gradient norms
    full: torch.Tensor  # arange(batch size)
    tail: torch.Tensor  # arange(rows of the epoch's last batch)
    graphs: dict[int, torch.cuda.CUDAGraph] = field(default_factory=dict)  # by batch rows
    eager_updates: int = 0


class GraphedEpochs:
    """Runs a Trainer's epochs as graph replays (or, off CUDA, as the same updates run eagerly)."""

    def __init__(self, trainer: Trainer, capture: bool = True) -> None:
        self.trainer = trainer
        self.capture = capture
        self.counter = torch.zeros((), dtype=torch.long, device=trainer.device)
        self.buffers: _StageBuffers | None = None
        self.side = torch.cuda.Stream(trainer.device) if capture else None

    def reset(self) -> None:
        """Forget the captured graph (optimizer state or parameters were replaced)."""
        self.buffers = None

    def _buffers_for(self, stage: Stage, n_steps: int) -> _StageBuffers:
        if self.buffers is None or self.buffers.stage_index != stage.index:
            t, device = self.trainer, self.trainer.device
            bs, n = t.spec.batch_size, len(stage.y)
            stride = t.grad_stats_stride(n_steps)
            self.buffers = _StageBuffers(
                stage_index=stage.index,
                order=torch.zeros(n, dtype=torch.long, device=device),
                steps=torch.arange(n_steps, device=device),
                measured=torch.arange(0, n_steps, stride, device=device),
                losses=torch.zeros(n_steps, device=device),
                norms=torch.zeros(math.ceil(n_steps / stride), len(t.trainable), device=device),
                full=torch.arange(min(bs, n), device=device),
                tail=torch.arange(n - (n_steps - 1) * bs, device=device),
            )
            if len(self.buffers.tail) == len(self.buffers.full):  # no short last batch
                self.buffers.tail = self.buffers.full
        return self.buffers

    def train_epoch(self, epoch: int, stage: Stage) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """The epoch's updates; returns what ``Trainer.train_epoch`` puts in its ``EpochResult``."""
        t = self.trainer
        n_steps = math.ceil(len(stage.y) / t.spec.batch_size)
        buf = self._buffers_for(stage, n_steps)
        buf.order.copy_(t.batch_order(len(stage.y)))
        self.counter.zero_()
        lrs = t.epoch_learning_rates(epoch, n_steps, stage)
        t.model.train()
        for i in range(n_steps):
            t.check_stop()
            t.set_lr(lrs[i])
            rows = buf.tail if i == n_steps - 1 else buf.full
            graph = buf.graphs.get(len(rows))
            if graph is not None:
                graph.replay()
            elif self.capture and buf.eager_updates >= WARMUP_UPDATES:
                self._capture_and_replay(stage, buf, rows)
            else:
                self._eager(stage, buf, rows)
            t.state.step += 1
        return buf.losses.clone(), buf.norms.clone(), lrs

    def _eager(self, stage: Stage, buf: _StageBuffers, rows: torch.Tensor) -> None:
        buf.eager_updates += 1
        if self.side is None:
            self._update(stage, buf, rows)
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self._update(stage, buf, rows)
        torch.cuda.current_stream().wait_stream(self.side)

    def _capture_and_replay(self, stage: Stage, buf: _StageBuffers, rows: torch.Tensor) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._update(stage, buf, rows)
        except Exception:  # an op that cannot be captured: the rest of the run trains eagerly
            log.warning("CUDA graph capture failed; training eagerly", exc_info=True)
            self.capture = False
            torch.cuda.synchronize(self.trainer.device)
            self._eager(stage, buf, rows)
            return
        buf.graphs[len(rows)] = graph
        graph.replay()

    def _update(self, stage: Stage, buf: _StageBuffers, rows: torch.Tensor) -> None:
        """The trainer's update (``Trainer.update``), positioned by the device counter; the same
        kernels eager or captured."""
        t = self.trainer
        idx = buf.order.index_select(0, self.counter * t.spec.batch_size + rows)

        # Row k of the buffers is written through a mask rather than index_copy_: elementwise kernels
        # are capturable under torch.use_deterministic_algorithms too, and cost a few microseconds.
        # A graph cannot branch on the counter, so the norms are computed on every update and kept
        # where the update is a measured one (no row matches otherwise).
        def measure(norms: torch.Tensor) -> None:
            buf.norms.copy_(torch.where((buf.measured == self.counter)[:, None], norms, buf.norms))

        diagnostics = t.spec.analysis.diagnostics
        loss = t.update(
            stage.X.index_select(0, idx), stage.y.index_select(0, idx), measure if diagnostics else None
        )
        buf.losses.copy_(torch.where(buf.steps == self.counter, loss.detach(), buf.losses))
        self.counter.add_(1)
