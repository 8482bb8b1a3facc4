"""ResNet-18 through Saddle's training path against a hand-written PyTorch loop, same process.

Service: ``worker.training.Trainer`` as the worker builds it (``worker.runner.configure_torch``,
then ``Trainer(spec, data, recorder, device).fit()``) with the spec at its defaults but for the
model (``resnet18``, batch norm), the optimizer (SGD, lr 0.1, momentum 0.9, as torchvision's
reference script), the epochs and, here, no Hessian spectra or periodic checkpoints (the hand loop
takes none); per-update and per-epoch logging, gradient statistics and unit statistics stay on and
go to a ``MemoryRecorder``.

Hand loop (torchvision's reference ``train.py`` style): the same model (``build_model``, same seed),
the images already on the device, a seeded ``randperm`` each epoch, ``F.cross_entropy``,
``loss.backward()``, ``optimizer.step()``, and before training and after each epoch the loss and
accuracy of the train, validation and test splits in eval mode (the work the service's ``evaluate``
does; the service's evaluation before training is its epoch 0, which the diagnosis reads), read once.

Data: CIFAR-shaped images (3xSxS, 10 classes) generated here: class-dependent colour means plus
noise; nothing is downloaded. Runs alternate (hand, service, ...) after an untimed warm-up of each;
images/s are training images per wall second, best of the repeats.

    .venv/bin/python benchmarks/resnet.py                  # CPU: 512 images of 3x16x16
    .venv/bin/python benchmarks/resnet.py --device cuda    # GPU: 50,000 images of 3x32x32,
        # also bf16 + channels-last (the service) against the hand loop's fp32 eager
    .venv/bin/python benchmarks/resnet.py --device cuda --check-graphs   # graphs on vs off, compared

Targets (issue 16): service/hand >= 0.95 at defaults; on a GPU, bf16 + channels-last >= 2x the hand
loop's fp32 eager.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.spec import JobSpec  # noqa: E402
from worker.data import Prepared, Scaler  # noqa: E402
from worker.nets import build_model  # noqa: E402
from worker.recorders import MemoryRecorder  # noqa: E402
from worker.runner import configure_torch  # noqa: E402
from worker.training import Trainer  # noqa: E402

TARGET, TARGET_BF16 = 0.95, 2.0


def cifar_like(n: int, side: int, seed: int = 0) -> Prepared:
    """n training images (and n/10 each for validation and test) with 10 learnable classes."""
    rng = np.random.default_rng(seed)
    total = n + 2 * max(1, n // 10)
    y = rng.integers(0, 10, total)
    means = rng.normal(0, 1, (10, 3, 1, 1)).astype(np.float32)
    X = (means[y] + rng.normal(0, 1, (total, 3, side, side)).astype(np.float32)).reshape(total, -1)
    a, b = n, n + max(1, n // 10)
    scaler = Scaler("none", np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32))
    return Prepared(
        X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:], "classification", "classification", 10, 10,
        scaler, (3, side, side), {"task": "classification", "n_train": a},
    )  # fmt: skip


def spec_for(batch_size: int, epochs: int, precision: str = "fp32", graphs: bool = True) -> JobSpec:
    return JobSpec.model_validate(
        {
            "data": {"dataset": "digits"},  # a placeholder: the Prepared arrays are passed in
            "model": {"arch": "resnet18", "norm": "batch"},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "batch_size": batch_size,
            "epochs": epochs,
            "analysis": {"hessian": {"enabled": False}},
            "checkpoints": {"every_epochs": 10_000, "keep_best": False},
            "resources": {"precision": precision, "cuda_graphs": graphs},
        }
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Clock = tuple[float, float]  # (wall seconds, this process's CPU seconds)


def clock() -> Clock:
    return time.perf_counter(), time.process_time()


def since(start: Clock) -> Clock:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def service(data: Prepared, spec: JobSpec, device: torch.device) -> tuple[Clock, MemoryRecorder]:
    configure_torch(spec)  # as the worker does before each job
    recorder = MemoryRecorder()
    trainer = Trainer(spec, data, recorder, device)
    sync(device)
    start = clock()
    trainer.fit()
    sync(device)
    return since(start), recorder


def hand(data: Prepared, spec: JobSpec, device: torch.device) -> Clock:
    model = build_model(spec.model, data.X_train.shape[1], 10, data.input_shape, spec.seed).to(device)
    shape = (-1, *data.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    splits = [
        (torch.as_tensor(X, device=device).view(shape), torch.as_tensor(y, device=device))
        for X, y in ((data.X_train, data.y_train), (data.X_val, data.y_val), (data.X_test, data.y_test))
    ]
    X, y = splits[0]
    gen = torch.Generator().manual_seed(spec.seed)
    bs = spec.batch_size

    @torch.no_grad()
    def evaluate() -> None:
        model.eval()
        sums = []
        for Xs, ys in splits:
            for j in range(0, len(ys), 512):
                out = model(Xs[j : j + 512])
                sums += [
                    F.cross_entropy(out, ys[j : j + 512], reduction="sum"),
                    (out.argmax(1) == ys[j : j + 512]).sum(),
                ]
        torch.stack([v.float() for v in sums]).tolist()  # one read per epoch

    sync(device)
    start = clock()
    evaluate()  # the splits before training: the service logs them too (epoch 0, which the diagnosis reads)
    for _epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen).to(device)
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate()
    sync(device)
    return since(start)


def compare(data: Prepared, device: torch.device, args: argparse.Namespace) -> None:
    """Best images/s of each loop by wall time and (CPU) by process CPU time: with one intra-op
    thread, CPU time is what the loop itself costs whatever the neighbours on a shared machine do."""
    images = args.epochs * len(data.y_train)
    fp32, bf16 = spec_for(args.batch_size, args.epochs), spec_for(args.batch_size, args.epochs, "bf16")
    hand(data, spec_for(args.batch_size, 1), device)  # warm-up: allocator, cuDNN, lazy inits
    service(data, spec_for(args.batch_size, 1), device)
    runs: dict[str, list[Clock]] = {"hand fp32": [], "service fp32": [], "service bf16": []}
    for _ in range(args.repeats):
        runs["hand fp32"].append(hand(data, fp32, device))
        runs["service fp32"].append(service(data, fp32, device)[0])
        if device.type == "cuda":
            runs["service bf16"].append(service(data, bf16, device)[0])
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    for k, which in enumerate(clocks):
        best = {name: max(images / c[k] for c in cs) for name, cs in runs.items() if cs}
        for name, rate in best.items():
            print(f"{which:>4} {name:>13}: {rate:10.1f} images/s")
        ratio = best["service fp32"] / best["hand fp32"]
        ok = "PASS" if ratio >= TARGET else "MISS"
        print(f"{which:>4} service / hand (fp32, defaults): {ratio:.3f}  target >= {TARGET}  {ok}")
        if "service bf16" in best:
            speedup = best["service bf16"] / best["hand fp32"]
            ok = "PASS" if speedup >= TARGET_BF16 else "MISS"
            print(
                f"{which:>4} service bf16 + channels-last / hand fp32 eager: {speedup:.2f}x  target >= {TARGET_BF16}x  {ok}"
            )


def check_graphs(data: Prepared, device: torch.device, batch_size: int) -> bool:
    """ResNet-18 with batch norm, graphs on and off: every logged loss and gradient norm equal."""
    logged = []
    for graphs in (True, False):
        torch.manual_seed(0)
        _seconds, recorder = service(data, spec_for(batch_size, 2, graphs=graphs), device)
        logged.append(
            {p.name: p.value for p in recorder.points if p.name.startswith(("train/", "val/", "grad/"))}
        )
    same = logged[0].keys() == logged[1].keys() and all(
        logged[0][k] == logged[1][k] or (math.isnan(logged[0][k]) and math.isnan(logged[1][k]))
        for k in logged[0]
    )
    differing = [k for k in logged[0] if logged[0][k] != logged[1].get(k)][:5]
    print(
        f"{'PASS' if same else 'FAIL'} CUDA graphs give the eager results"
        + ("" if same else f": {differing}")
    )
    return same


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--images", type=int, help="training images (default 50,000 on GPU, 512 on CPU)")
    parser.add_argument("--side", type=int, help="image side (default 32 on GPU, 16 on CPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, help="default 3 on GPU, 2 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU: intra-op threads (0: torch's default)")
    parser.add_argument("--check-graphs", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.images = args.images or (50_000 if gpu else 512)
    args.side = args.side or (32 if gpu else 16)
    args.epochs = args.epochs or (3 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; ResNet-18, {args.images} images 3x{args.side}x{args.side}, "
          f"batch {args.batch_size}, {args.epochs} epochs, best of {args.repeats}")  # fmt: skip
    data = cifar_like(args.images, args.side)
    if args.check_graphs:
        sys.exit(0 if check_graphs(data, device, args.batch_size) else 1)
    compare(data, device, args)


if __name__ == "__main__":
    main()
