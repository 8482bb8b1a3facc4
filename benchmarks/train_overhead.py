"""The service's training loop against a hand-written PyTorch loop doing the same work, same process.

Service: ``worker.training.Trainer`` with per-step and per-epoch logging on, Hessian off, timed
around ``Trainer.fit()``. By default its points go where the worker's go: the job's metric writer
(``worker.metric_writer``), committing to a fresh Postgres database on its own thread, flushed
before the "last" checkpoint and closed inside the timing (``--store memory``: a ``MemoryRecorder``
only, as before issue 18). Periodic and best checkpoints are off because the hand
loop writes none; the one "last" checkpoint that ``fit`` always writes stays in the service's time.

Hand loop: the same model (``worker.nets.build_model``, same seed, so the same initial weights), the
same prepared arrays already on the device, the same batch size and epochs, shuffling with
``torch.randperm`` from a seeded generator, the same optimizer, and after each epoch the loss of the
train, validation and test splits in eval mode, read off the device once per epoch.

Runs alternate (hand, service, hand, service, ...) after one untimed warm-up of each, so a load spike
on this shared machine hits both. Each run is timed by two clocks: wall time, and the process's CPU
time. Throughputs and the ratio service/hand are the best of the repeats (the least disturbed run;
every loop gets the same treatment). With one intra-op thread on the CPU, CPU time is what the loop
itself costs, whatever the neighbours do, so on this shared machine the CPU-time ratio is the steadier
figure; on a GPU only wall time means anything. ``--profile`` adds a cProfile of the service's run
(what ``Trainer.fit`` and ``Trainer.train_epoch`` call).

    .venv/bin/python benchmarks/train_overhead.py [--repeats 9] [--threads 1] [--device cpu] [--profile]
        [--curve [--curve-epochs 3]]   # also the batch-size timing curve (worker.timing), 1 to 4,096
        [--check-graphs]               # CUDA: graphs on vs off, every logged number compared
        [--store postgres|memory]      # where the service's points go (default: the metric writer)

On CUDA the service captures each update as a CUDA graph (worker/graphed.py); ``--curve`` then
times the curve with graphs and, on digits, without them (``resources.cuda_graphs: false``), and
``--check-graphs`` trains the same specs both ways and compares every logged value.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.settings import get_settings  # noqa: E402
from models.spec import JobSpec  # noqa: E402
from worker.data import Prepared, load_builtin, prepare  # noqa: E402
from worker.nets import build_model  # noqa: E402
from worker.recorders import MemoryRecorder  # noqa: E402
from worker.training import Trainer  # noqa: E402

TARGET = 0.95
# Issue 18: with the metric writer on, batch 32 (per-update logging at ~2,000 updates/s) keeps 0.97.
TARGET_BY_BATCH = {32: 0.97}
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


class StoreRecorder(MemoryRecorder):
    """What DbRecorder does with points and progress, without the artifact store: a MetricWriter
    takes them on its own thread; the checkpoint waits for the flush, as the worker's does."""

    def __init__(self, claim: Any) -> None:
        from worker.metric_writer import MetricWriter

        super().__init__()
        settings = get_settings()
        self.writer = MetricWriter(
            claim, batch_points=settings.metric_flush_points, queue_batches=settings.metric_queue_batches
        )

    def log(self, points: list[Any]) -> None:
        self.writer.log(points)

    def epoch_end(self, epoch: int, step: int, progress: dict[str, Any]) -> None:
        self.writer.progress(progress)

    def save_checkpoint(
        self, kind: str, epoch: int, step: int, val_loss: float | None, payload: bytes
    ) -> None:
        self.writer.flush()
        super().save_checkpoint(kind, epoch, step, val_loss, payload)


class Store:
    """A fresh database (dropped at exit) with a running job row per service run."""

    def __init__(self) -> None:
        self.name = f"saddle_trainbench_{uuid.uuid4().hex[:8]}"
        self.url = f"{PG_SERVER}/{self.name}"
        admin_sql(f'CREATE DATABASE "{self.name}"')
        os.environ["SADDLE_DATABASE_URL"] = self.url
        get_settings.cache_clear()
        from migrations import run_upgrade

        run_upgrade(self.url)

    def recorder(self) -> StoreRecorder:
        from models.db import session_scope
        from models.tables import Job, Project, new_id
        from worker.lifecycle import Claim

        spec = {"data": {"dataset": "digits"}}
        with session_scope() as session:
            project = Project(name=new_id())
            session.add(project)
            session.flush()
            job = Job(project_id=project.id, spec=spec, status="running", attempts=1, attempt_token=new_id())
            session.add(job)
            session.flush()
            claim = Claim(job.id, job.attempt_token or "", 1, JobSpec.model_validate(spec), project.id)
        return StoreRecorder(claim)

    def drop(self) -> None:
        from models.db import _engines

        for engine in _engines.values():
            engine.dispose()
        admin_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(sql)


STORE: Store | None = None  # set by main(): where run_service's points go


@dataclass(frozen=True)
class Case:
    name: str
    batch_size: int
    epochs: int  # chosen so one run takes a fraction of a second on this CPU


CASES = (
    Case("MLP 64-256-256-10, digits, batch 32", 32, 10),
    Case("MLP 64-256-256-10, digits, batch 256", 256, 40),
    Case("MLP 64-256-256-10, digits, batch 1", 1, 1),
)


def make_spec(case: Case, device: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "data": {"dataset": "digits", "scaling": "standardize"},
            "model": {"arch": "mlp", "hidden": [256, 256]},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "batch_size": case.batch_size,
            "epochs": case.epochs,
            "checkpoints": {"every_epochs": 10_000, "keep_best": False},
            "analysis": {"hessian": {"enabled": False}},
            "resources": {"device": device},
        }
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float
    steps: int


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float], steps: int) -> Timed:
    wall, cpu = clocks()
    return Timed(wall - start[0], cpu - start[1], steps)


def run_service(spec: JobSpec, data: Prepared, device: torch.device) -> Timed:
    recorder = STORE.recorder() if STORE is not None else MemoryRecorder()
    trainer = Trainer(spec, data, recorder, device)
    sync(device)
    start = clocks()
    trainer.fit()
    if isinstance(recorder, StoreRecorder):
        recorder.writer.close()  # every point committed: part of the service's time
    sync(device)
    return elapsed(start, trainer.state.step)


def hand_optimizer(spec: JobSpec, model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    """What a hand-written loop would construct: torch.optim.SGD with its defaults (on a CPU, a
    for-loop of several kernels per parameter), or with ``fused=True`` as the service uses."""
    o = spec.optimizer
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, fused=fused or None)


def run_hand(spec: JobSpec, data: Prepared, device: torch.device, fused: bool = False) -> Timed:
    model = build_model(spec.model, data.X_train.shape[1], data.n_outputs, None, spec.seed).to(device)
    opt = hand_optimizer(spec, model, fused)
    X, y = (torch.as_tensor(a, device=device) for a in (data.X_train, data.y_train))
    splits = [
        (torch.as_tensor(Xs, device=device), torch.as_tensor(ys, device=device))
        for Xs, ys in ((data.X_train, data.y_train), (data.X_val, data.y_val), (data.X_test, data.y_test))
    ]
    gen = torch.Generator().manual_seed(spec.seed)
    bs, n, steps = spec.batch_size, len(y), 0
    sync(device)
    start = clocks()
    for _ in range(spec.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            torch.stack([F.cross_entropy(model(Xs), ys) for Xs, ys in splits]).tolist()
    sync(device)
    return elapsed(start, steps)


def alternate(runs: dict[str, Callable[[], Timed]], repeats: int) -> dict[str, list[Timed]]:
    """Every run ``repeats`` times, alternating; one untimed warm-up of each first."""
    for run in runs.values():
        run()
    timed: dict[str, list[Timed]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            timed[name].append(run())
    return timed


def best_rate(runs: list[Timed], clock: str) -> float:
    return max(r.steps / getattr(r, clock) for r in runs)


def paired_median(hand: list[Timed], service: list[Timed]) -> float:
    """Each round's service run against the hand run of the same round, by CPU time: a drift in the
    machine's speed (a noisy neighbour on this VM) cancels within a round, the median ignores a spike."""
    return statistics.median(
        (s.steps / s.cpu) / (h.steps / h.cpu) for h, s in zip(hand, service, strict=True)
    )


def bench(case: Case, device: torch.device, repeats: int) -> float:
    spec = make_spec(case, device.type)
    data = prepare(spec.data, load_builtin("digits", {}, spec.seed), spec.seed)
    timed = alternate(
        {
            "hand": lambda: run_hand(spec, data, device),
            "hand, fused": lambda: run_hand(spec, data, device, fused=True),
            "service": lambda: run_service(spec, data, device),
        },
        repeats,
    )
    hand, service = best_rate(timed["hand"], "wall"), best_rate(timed["service"], "wall")
    cpu_ratio = best_rate(timed["service"], "cpu") / best_rate(timed["hand"], "cpu")
    like_for_like = best_rate(timed["service"], "cpu") / best_rate(timed["hand, fused"], "cpu")
    ratio = cpu_ratio if device.type == "cpu" else service / hand
    target = TARGET_BY_BATCH.get(case.batch_size, TARGET) if STORE is not None else TARGET
    verdict = "meets" if ratio >= target else "misses"
    print(
        f"{case.name}: hand {hand:,.0f} updates/s, service {service:,.0f} updates/s (wall), "
        f"ratio {service / hand:.3f} wall, {cpu_ratio:.3f} CPU time, "
        f"{paired_median(timed['hand'], timed['service']):.3f} median of paired rounds (CPU time) "
        f"({verdict} {target}); against the hand loop with the same fused optimizer: "
        f"{like_for_like:.3f} CPU time, "
        f"{paired_median(timed['hand, fused'], timed['service']):.3f} median of paired rounds",
        flush=True,
    )
    return ratio


def profile(case: Case, device: torch.device, top: int = 25) -> None:
    """cProfile of one service run: where train_epoch's time goes, by the functions it calls."""
    spec = make_spec(case, device.type)
    data = prepare(spec.data, load_builtin("digits", {}, spec.seed), spec.seed)
    run_service(spec, data, device)
    profiler = cProfile.Profile()
    profiler.runcall(run_service, spec, data, device)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_callees(r"\(fit\)")
    stats.print_callees("train_epoch")
    stats.print_stats(top)
    print(f"--- profile: {case.name} ---\n{out.getvalue()}")


CURVE_SIZES = [1, 4, 16, 64, 256, 1024, 4096]
CURVE_DATA = {
    "digits": {"dataset": "digits", "scaling": "standardize"},
    "100,000 synthetic samples": {
        "dataset": "blobs",
        "params": {"n_samples": 100_000, "n_features": 64, "centers": 10},
        "scaling": "standardize",
    },
}


def curve(device: torch.device, epochs: int) -> None:
    """The batch-size timing study (worker.timing) for the same MLP, batch 1 to 4,096: with CUDA
    graphs (the service's default on a GPU) and, on digits, eager for comparison."""
    from worker.timing import measure_batch_sizes

    runs = [(label, data_spec, True) for label, data_spec in CURVE_DATA.items()]
    if device.type == "cuda":
        runs.insert(1, ("digits", CURVE_DATA["digits"], False))
    for label, data_spec, graphs in runs:
        spec = JobSpec.model_validate(
            {
                "data": data_spec,
                "model": {"hidden": [256, 256]},
                "resources": {"device": device.type, "cuda_graphs": graphs},
            }
        )
        data = prepare(spec.data, load_builtin(spec.data.dataset, spec.data.params, spec.seed), spec.seed)
        mode = ("CUDA graphs" if graphs else "eager") if device.type == "cuda" else "CPU"
        print(
            f"--- batch-size timing, MLP 64-256-256-10 on {label} ({len(data.y_train):,} training rows), "
            f"{mode} ---"
        )
        for row in measure_batch_sizes(spec, data, CURVE_SIZES, epochs, device):
            print(
                f"batch {row['batch_size']:>5}: {row['ms_per_update']:8.3f} ms/update, "
                f"{row['seconds_per_epoch']:8.3f} s/epoch, {row['samples_per_second']:12,.0f} samples/s",
                flush=True,
            )


GRAPH_CHECKS = {
    "sgd momentum, cosine warm-up, L2, clip, batch norm": {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "regularization": {"l2": 1e-4, "grad_clip": 5.0},
        "model": {"arch": "mlp", "hidden": [256, 256], "norm": "batch"},
    },
    "adam, step schedule": {
        "optimizer": {"name": "adam", "lr": 1e-3},
        "schedule": {"name": "step", "step_epochs": 2, "gamma": 0.5},
        "model": {"arch": "mlp", "hidden": [256, 256]},
    },
}


def check_graphs(device: torch.device, epochs: int = 5, batch_size: int = 64) -> bool:
    """Train each spec with CUDA graphs and eagerly (same fused optimizer): every logged value of
    the two runs must be identical (time/* excepted). Prints the time per update of both."""
    ok = True
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the worker runs (configure_torch)
    for label, extra in GRAPH_CHECKS.items():
        runs = {}
        for graphs in (True, False):
            spec = JobSpec.model_validate(
                {
                    "data": {"dataset": "digits", "scaling": "standardize"},
                    "batch_size": batch_size,
                    "epochs": epochs,
                    "checkpoints": {"every_epochs": 10_000, "keep_best": False},
                    "analysis": {"hessian": {"enabled": False}},
                    "resources": {"device": device.type, "cuda_graphs": graphs},
                    **extra,
                }
            )
            data = prepare(spec.data, load_builtin("digits", {}, spec.seed), spec.seed)
            recorder = MemoryRecorder()
            trainer = Trainer(spec, data, recorder, device)
            summary = trainer.fit()
            values = {(p.name, p.step): p.value for p in recorder.points if not p.name.startswith("time/")}
            runs[graphs] = (values, summary["ms_per_update"], trainer.graphs is not None)
        (with_g, ms_g, used), (eager, ms_e, _) = runs[True], runs[False]
        diff = max(abs(with_g[k] - eager[k]) for k in eager) if with_g.keys() == eager.keys() else math.inf
        same = with_g == eager and used
        ok &= same
        print(
            f"graphs vs eager, {label}: {len(eager):,} logged values, max |difference| {diff:.3g} "
            f"({'identical' if same else 'DIFFERENT'}; graphs used: {used}); "
            f"ms/update incl. evaluation: graphs {ms_g:.3f}, eager {ms_e:.3f}",
            flush=True,
        )
    torch.use_deterministic_algorithms(False)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    # One intra-op thread by default: the worker runs with cores ÷ concurrency threads, and on this
    # shared two-core machine a second thread waits on busy cores and measures the neighbours.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--curve", action="store_true", help="also the batch-size timing curve, 1 to 4,096")
    parser.add_argument("--curve-epochs", type=int, default=3)
    parser.add_argument("--check-graphs", action="store_true", help="CUDA: graphs on vs off, compared")
    parser.add_argument("--store", choices=("postgres", "memory"), default="postgres")
    args = parser.parse_args()
    global STORE
    STORE = Store() if args.store == "postgres" else None
    try:
        run(args)
    finally:
        if STORE is not None:
            STORE.drop()


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}), torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.repeats} alternating repeats, best of each; service points to "
        f"{'the metric writer (Postgres)' if STORE else 'memory'}"
    )
    if args.check_graphs:
        print(f"{'PASS' if check_graphs(device) else 'FAIL'} CUDA graphs give the eager results", flush=True)
    ratios = [bench(case, device, args.repeats) for case in CASES]
    if args.curve:
        curve(device, args.curve_epochs)
    if args.profile:
        for case, ratio in zip(CASES, ratios, strict=True):
            if ratio < TARGET:
                profile(case, device)


if __name__ == "__main__":
    main()
