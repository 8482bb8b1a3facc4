"""worker.hessian against PyHessian 0.1 on a GPU: a ResNet-style CNN, 10,000 CIFAR-shaped samples.

    python benchmarks/hessian_gpu.py [--samples 10000] [--skip-pyhessian] [--compile]
    python benchmarks/hessian_gpu.py --resnet18 [--samples 2048]   # the worker's spectrum of a ResNet-18

The model (~450k parameters: residual blocks with batch norm, widths 32-64-144) is trained for two
epochs on synthetic CIFAR-shaped data (Gaussian images, labels from a random convolutional teacher,
generated here: nothing is downloaded), then put in eval mode. Everything runs on the GPU in float32
with torch's default precision settings (cuDNN convolutions may use TF32, for both libraries alike).

1. Cost of one full-data Hessian-vector product against one full-data gradient (median of
   repeats, each ended by a device synchronization): forward-over-reverse (``jvp`` of ``grad``, our
   default), double backward, and with ``--compile`` the forward-over-reverse product through
   ``torch.compile``. (Four vectors at once through ``vmap`` ran out of the H200's 140 GB even on
   1,250-image chunks: vmap's batching rules for convolution backward materialize far more than
   four single products do, so it is not measured here.)
2. Top-5 eigenvalues: PyHessian's ``eigenvalues(top_n=5)`` at its defaults (maxIter 100, tol 1e-3)
   against ``worker.hessian.spectrum(top_k=5, bottom_k=1)`` at the same nominal tol (1e-3: ours
   stops on the residual bound of every wanted Ritz pair, theirs on the change of the eigenvalue),
   both timed once after a warm-up of the device. Errors are against our own run at tol 1e-6
   (the reference: 1e-6 residual bound relative to the largest |eigenvalue|).

Targets (issue 4): top-5 and lambda_min in <= 1/8 of PyHessian's top-5 time; an HVP costing
<= 2.5x a gradient. Report with the GPU's name (printed first).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models.spec import Model as ModelSpec  # noqa: E402
from worker.hessian import (  # noqa: E402
    MAX_CHUNK_ELEMENTS,
    _chunks,
    _HessianOperator,
    activation_budget,
    activation_elements,
    spectrum,
)
from worker.nets import build_model  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.skip(x))


def resnet(widths: tuple[int, ...] = (32, 64, 144), blocks: tuple[int, ...] = (2, 2, 1)) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            layers.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def synthetic(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    X = torch.randn(n, 3, 32, 32, generator=gen)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 5, 2), nn.Tanh(), nn.Flatten(), nn.LazyLinear(10))
    torch.manual_seed(1)
    with torch.no_grad():
        y = teacher(X).argmax(1)
    return X.to(device), y.to(device)


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int = 2) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator(device="cpu").manual_seed(2)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).to(X.device).split(256):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_costs(model: nn.Module, X: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per full-data gradient and per full-data HVP, each engine (chunks as spectrum makes them)."""
    chunks = _chunks([(X, y)], True, MAX_CHUNK_ELEMENTS)
    fwd = _HessianOperator(model, F.cross_entropy, chunks, None, "forward_over_reverse", 64)
    dbl = _HessianOperator(model, F.cross_entropy, chunks, None, "double_backward", 64)
    v = torch.randn(fwd.n, device=X.device)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        for c in chunks:
            (c.weight * F.cross_entropy(model(c.inputs), c.targets)).backward()

    costs = {
        "gradient (loss.backward)": median_seconds(gradient, repeats),
        "HVP forward-over-reverse": median_seconds(lambda: fwd._products(v[None], False), repeats),
        "HVP double backward": median_seconds(lambda: dbl._products(v[None], False), repeats),
    }
    print(f"chunks of the data: {len(chunks)}", flush=True)
    model.zero_grad(set_to_none=True)
    return costs


def compiled_engine_cost(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, repeats: int
) -> dict[str, float]:
    chunks = _chunks([(X, y)], True, MAX_CHUNK_ELEMENTS)
    fwd = _HessianOperator(model, F.cross_entropy, chunks, None, "forward_over_reverse", 64)
    return compiled_cost(fwd, chunks, torch.randn(fwd.n, device=X.device), repeats)


def compiled_cost(op: _HessianOperator, chunks: list[Any], v: torch.Tensor, repeats: int) -> dict[str, float]:
    """The same product through torch.compile (compile time reported, not counted per product)."""

    def hvp(
        flat: torch.Tensor, vec: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        def loss(p: torch.Tensor) -> torch.Tensor:
            views = [c.view(s) for c, s in zip(p.split(op.sizes), op.shapes, strict=True)]
            return F.cross_entropy(
                functional_call(op.model, dict(zip(op.names, views, strict=True)), (inputs,)), targets
            )

        return jvp(grad(loss), (flat,), (vec,))[1]

    compiled = torch.compile(hvp)
    start = time.perf_counter()
    try:
        for c in chunks:
            compiled(op.flat, v, c.inputs, c.targets)
        sync()
    except Exception as exc:  # report and go on: the other figures stand without it
        print(f"torch.compile of the HVP failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return {}
    print(f"torch.compile of the HVP: {time.perf_counter() - start:.1f} s to compile", flush=True)

    def run() -> None:
        for c in chunks:
            compiled(op.flat, v, c.inputs, c.targets).mul_(c.weight)

    return {"HVP forward-over-reverse, torch.compile": median_seconds(run, repeats)}


def rel_err(values: list[float], reference: list[float]) -> float:
    got = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    ref = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def resnet18_spectrum(samples: int, device: torch.device) -> int:
    """``--resnet18``: the spectrum the worker takes of a ResNet-18 (worker.nets, batch norm, small
    stem; 11.2M parameters) on ``samples`` CIFAR-shaped images, at the worker's settings (top-5,
    lambda_min, trace): batch norm in eval mode, the batch cut into chunks whose activations fit
    the device's free memory (worker.hessian.activation_budget). Prints the chunking, time, HVPs and
    peak memory; no baseline (PyHessian runs the whole batch in one pass)."""
    spec = ModelSpec.model_validate({"arch": "resnet18", "norm": "batch"})
    X, y = synthetic(samples, device)
    model = build_model(spec, 3 * 32 * 32, 10, (3, 32, 32), 0).to(device)
    train(model, X.flatten(1), y, epochs=1)
    flat = X.flatten(1)
    per_row = activation_elements(model, flat)
    budget = activation_budget(device)
    rows = max(1, budget // per_row)
    print(
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; ResNet-18 (batch norm), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {samples:,} images; {per_row:,} activation "
        f"values per image, budget {budget:,}: {rows:,} images per chunk, {-(-samples // rows)} chunks",
        flush=True,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = [(flat[i : i + 1024], y[i : i + 1024]) for i in range(0, samples, 1024)]  # as worker.curvature
    # At its defaults (at 11M parameters the method is Lanczos whatever the exact-path threshold).
    seconds, result = timed(lambda: spectrum(model, nn.functional.cross_entropy, batches))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(
        f"spectrum: {seconds:.1f} s, {result.hvps} HVPs ({result.hvp_mode}), top-5 {result.top}, "
        f"lambda_min {result.bottom}, trace {result.trace}; peak GPU memory {peak:.1f} GiB",
        flush=True,
    )
    return 0 if all(math.isfinite(v) for v in result.top) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--device", default="cuda", help="cpu only for a quick smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-pyhessian", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the HVP through torch.compile")
    parser.add_argument(
        "--resnet18", action="store_true", help="the worker's spectrum of a ResNet-18 instead"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.resnet18:
        return resnet18_spectrum(min(args.samples, 2048), device)
    X, y = synthetic(args.samples, device)
    torch.manual_seed(0)
    model = resnet().to(device)
    train(model, X, y)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}; ResNet-style CNN with batch norm, "
        f"{n:,} parameters, {args.samples:,} CIFAR-shaped samples, eval mode, float32",
        flush=True,
    )
    costs = engine_costs(model, X, y, args.repeats)
    g = costs["gradient (loss.backward)"]
    print_costs(costs, g)

    loss = nn.functional.cross_entropy
    batches = [(X, y)]
    runs = {}
    for tol in (1e-2, 1e-3, 1e-6):  # the last is the reference
        seconds, result = timed(
            lambda tol=tol: spectrum(model, loss, batches, exact_threshold=0, trace=False, tol=tol)
        )
        runs[tol] = (seconds, result)
        print(
            f"ours tol {tol:.0e}: {seconds:.2f} s, {result.hvps} HVPs, top-5 {result.top}, "
            f"lambda_min {result.bottom}",
            flush=True,
        )
    ref = runs[1e-6][1]
    rows = [
        (f"ours top-5 + lambda_min, tol {tol:.0e}", r.hvps, t, rel_err(r.top, ref.top), r)
        for tol, (t, r) in runs.items()
    ]
    ph_time = None
    if not args.skip_pyhessian:
        from hessian import PyHessianCounter

        ph = PyHessianCounter()
        ph_time, values = timed(lambda: ph.run(model, X, y, "top", 1e-3, cuda=device.type == "cuda"))
        print(f"PyHessian defaults: {ph_time:.2f} s, {ph.calls} HVPs, top-5 {values}", flush=True)
        ph_err = rel_err(values, ref.top)
        rows.append(("PyHessian top-5, defaults (tol 1e-3)", ph.calls, ph_time, ph_err, None))
        model.eval()
    print(f"{'method':<48} {'HVPs':>5} {'wall s':>8} {'max rel err top-5':>18}")
    for name, hvps, seconds, err, _ in rows:
        print(f"{name:<48} {hvps:>5} {seconds:>8.2f} {err:>18.2e}")
    print(f"our HVP engine: {ref.hvp_mode}; lambda_min (reference) {ref.bottom[0]:.6g}")
    ok = True
    if ph_time is not None:
        # Our fastest run whose top-5 is at least as accurate as PyHessian's (the reference excluded).
        fair = [r for r in rows[:-2] if r[3] <= ph_err]
        best = min(fair, key=lambda r: r[2], default=rows[1])
        ok = best[2] <= ph_time / 8
        print(
            f"{'PASS' if ok else 'FAIL'} top-5 + lambda_min ({best[0]}, error {best[3]:.1e} vs PyHessian's "
            f"{ph_err:.1e}) in 1/{ph_time / best[2]:.1f} of PyHessian's time (target <= 1/8)",
            flush=True,
        )
    if args.compile:  # last: compiling can take minutes, and everything above stands without it
        costs |= compiled_engine_cost(model, X, y, args.repeats)
        print_costs(costs, g)
    best = min(s for k, s in costs.items() if k.startswith("HVP"))
    cheap = best / g <= 2.5
    print(f"{'PASS' if cheap else 'FAIL'} cheapest HVP {best / g:.2f}x a gradient (target <= 2.5x)")
    return 0 if ok and cheap else 1


def print_costs(costs: dict[str, float], gradient: float) -> None:
    for name, seconds in costs.items():
        print(f"{name:<58} {seconds * 1000:9.1f} ms  {seconds / gradient:5.2f}x gradient", flush=True)


if __name__ == "__main__":
    sys.exit(main())
