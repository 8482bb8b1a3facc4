"""worker.hessian against an independent float64 reference Hessian (pure torch, no services).

The reference is ``jacrev(jacrev(loss))`` of a flat-parameter function on a float64 copy of the
model: no Lanczos, no HVP engine of ours, then ``torch.linalg.eigh``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from functools import cache

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, jacrev

from worker.hessian import SpectrumResult, classify_critical_point, noise_floor, spectrum

cross_entropy = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tensors are small: one thread is as fast, and immune to OpenMP threads spinning
    against other processes on a shared 2-core machine (which made this file 5x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Written out: torch's nn.MSELoss has no working forward-over-reverse derivative (it raises
    # "ZeroTensors are immutable"); that case is tested separately as a fallback.
    return ((outputs - targets) ** 2).mean()


def reference(model: nn.Module, loss_fn: Callable, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Full Hessian of the mean loss in float64, eval mode, trainable parameters only."""
    m = copy.deepcopy(model).double().eval()
    named = [(k, p) for k, p in m.named_parameters() if p.requires_grad]
    sizes, shapes = [p.numel() for _, p in named], [p.shape for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    Xd = X.double() if X.is_floating_point() else X
    yd = y.double() if y.is_floating_point() else y

    def f(v: torch.Tensor) -> torch.Tensor:
        views = [c.view(s) for c, s in zip(v.split(sizes), shapes, strict=True)]
        params = {k: t for (k, _), t in zip(named, views, strict=True)}
        return loss_fn(functional_call(m, params, (Xd,)), yd)

    H = jacrev(jacrev(f))(flat)
    return 0.5 * (H + H.T)


def rel_err(got: list[float], want: np.ndarray) -> float:
    got_a = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got_a - want) / np.abs(want)))


# ------------------------------------------------------------------------------ models and data


@cache
def digits(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    X = torch.tensor(d.data[:n], dtype=torch.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    return X, torch.tensor(d.target[:n])


def random_regression(n: int = 200, d_in: int = 6, d_out: int = 3, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g)
    y = X @ torch.randn(d_in, d_out, generator=g) + 0.1 * torch.randn(n, d_out, generator=g)
    return X, y


def tanh_mlp(widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def sgd(model: nn.Module, loss_fn: Callable, X: torch.Tensor, y: torch.Tensor, steps: int, lr: float):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (32,), generator=g)
        opt.zero_grad()
        loss_fn(model(X[idx]), y[idx]).backward()
        opt.step()
    return model


def linear_saddle() -> tuple[nn.Module, Callable, torch.Tensor, torch.Tensor]:
    """Two-layer linear net (hidden 8) at all-zero weights: gradient 0, Hessian [[0, B], [B^T, 0]]
    with eigenvalues +-sigma_i(B), each repeated 8 times (once per hidden unit)."""
    X, y = random_regression(n=200, d_in=16, d_out=4)
    model = nn.Sequential(nn.Linear(16, 8, bias=False), nn.Identity(), nn.Linear(8, 4, bias=False))
    for p in model.parameters():
        nn.init.zeros_(p)
    return model, mse, X, y


def checkpoint(name: str) -> tuple[nn.Module, Callable, torch.Tensor, torch.Tensor]:
    if name == "saddle_zero_init":
        return linear_saddle()
    if name.startswith("digits"):
        X, y = digits()
        model = tanh_mlp([64, 12, 10], seed=0)
        loss_fn: Callable = cross_entropy
    else:
        X, y = random_regression()
        model = tanh_mlp([6, 16, 16, 3], seed=0)
        loss_fn = mse
    if name.endswith("sgd"):
        sgd(model, loss_fn, X, y, steps=150, lr=0.1)
    return model, loss_fn, X, y


CHECKPOINTS = ["digits_init", "digits_sgd", "random_init", "random_sgd", "saddle_zero_init"]


@cache
def lanczos_case(name: str) -> tuple[SpectrumResult, torch.Tensor, nn.Module]:
    model, loss_fn, X, y = checkpoint(name)
    result = spectrum(model, loss_fn, [(X, y)], exact_threshold=0, seed=3)
    return result, reference(model, loss_fn, X, y), model


# ----------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_lanczos_matches_exact_eigenvalues(name: str) -> None:
    result, H, _ = lanczos_case(name)
    evals = torch.linalg.eigvalsh(H).numpy()
    assert result.method == "lanczos" and result.converged
    assert 100 < result.n_params == H.shape[0]  # more parameters than Lanczos steps
    assert rel_err(result.top, evals[::-1][:5]) < 1e-4
    assert rel_err(result.bottom, evals[:1]) < 1e-4
    exact_trace = float(torch.trace(H))
    rounding = 1e-5 * float(torch.linalg.matrix_norm(H, "nuc"))  # float32 sums over n terms
    assert abs(result.trace - exact_trace) <= 3 * result.trace_stderr + rounding
    assert result.hvps < result.n_params  # far fewer products than forming H


def test_saddle_at_zero_weights() -> None:
    result, H, _ = lanczos_case("saddle_zero_init")
    assert result.grad_norm == 0.0
    assert result.restarts > 0  # repeated eigenvalues found by restarting at invariant subspaces
    verdict = classify_critical_point(result)
    assert verdict["class"] == "saddle"
    assert (
        verdict["lambda_min"] < -verdict["noise_floor"] < 0 < verdict["noise_floor"] < verdict["lambda_max"]
    )
    v = torch.as_tensor(result.escape_direction).double()
    assert v.dtype == torch.float64 and abs(float(v.norm()) - 1) < 1e-5
    curvature = float(v @ H @ v)
    assert curvature == pytest.approx(result.bottom[0], rel=1e-4)
    assert curvature == pytest.approx(float(torch.linalg.eigvalsh(H)[0]), rel=1e-4)


def test_trained_logistic_regression_is_a_minimum() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 10, generator=g)
    y = (X[:, 0] + X[:, 1] + torch.randn(400, generator=g) > 0).long()  # noisy: a finite minimum
    model = nn.Linear(10, 2)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, tolerance_grad=1e-9, tolerance_change=0)
    opt.step(lambda: (opt.zero_grad(), (loss := cross_entropy(model(X), y)).backward(), loss)[2])
    for threshold in (0, 5000):  # Lanczos and exact
        result = spectrum(model, cross_entropy, [(X, y)], exact_threshold=threshold)
        verdict = classify_critical_point(result, lr=0.5)
        assert verdict["class"] == "local_minimum", verdict
        assert result.bottom[0] >= -noise_floor(result)
        assert verdict["sharpness"] == pytest.approx(0.5 * result.top[0])
        assert verdict["beyond_edge"] is False


def test_not_critical_at_init() -> None:
    result, _, _ = lanczos_case("digits_init")
    verdict = classify_critical_point(result, lr=10.0)
    assert verdict["class"] == "not_critical"
    assert verdict["beyond_edge"] is (10.0 * result.top[0] > 2.0)
    assert verdict["edge_of_stability"] == 2.0


def interpolating(loss: float, grad_norm: float) -> SpectrumResult:
    """The final spectrum of a 256-256 network fitted to 40 regression rows (float32)."""
    return SpectrumResult(
        top=[34.4], bottom=[2.5e-8], trace=71.6, trace_stderr=0.65, hvps=60, seconds=0.1,
        method="lanczos", n_params=68_000, samples=40, grad_norm=grad_norm, hg_norm=3.9e-6,
        loss=loss, dtype="float32", hvp_mode="double_backward",
    )  # fmt: skip


def test_a_model_still_descending_to_zero_loss_is_not_at_a_critical_point() -> None:
    # An MSE of 6e-15 with a gradient whose one stable step lowers it by 8%: still descending, far
    # below float32's eps (which was the floor of the loss scale and made this a local minimum).
    assert classify_critical_point(interpolating(loss=5.9e-15, grad_norm=1.8e-7))["class"] == "not_critical"
    # At the same loss with a gradient a thousand times smaller the step gains nothing: a minimum.
    assert classify_critical_point(interpolating(loss=5.9e-15, grad_norm=1.8e-10))["class"] == "local_minimum"


def test_exact_path_matches_reference() -> None:
    model, loss_fn, X, y = checkpoint("random_sgd")
    result = spectrum(model, loss_fn, [(X, y)], top_k=3, bottom_k=2, exact_threshold=10**6)
    H = reference(model, loss_fn, X, y)
    evals = torch.linalg.eigvalsh(H).numpy()
    assert result.method == "exact" and result.hvps == result.n_params
    assert rel_err(result.top, evals[::-1][:3]) < 1e-4
    assert rel_err(result.bottom, evals[:2]) < 1e-4
    assert result.trace == pytest.approx(float(torch.trace(H)), rel=1e-5) and result.trace_stderr == 0
    g = _gradient(model, loss_fn, X, y)
    assert result.grad_norm == pytest.approx(float(g.norm()), rel=1e-4)
    assert result.hg_norm == pytest.approx(float((H @ g).norm()), rel=1e-4)


def _gradient(model: nn.Module, loss_fn: Callable, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model).double()
    loss = loss_fn(m(X.double()), y.double() if y.is_floating_point() else y)
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(m.parameters()))])


# ------------------------------------------------------------------------- data, modes, engines


@pytest.mark.parametrize("merge", [True, False])
def test_unequal_batches_are_weighted_by_size(merge: bool) -> None:
    model, loss_fn, X, y = checkpoint("digits_sgd")
    cuts = [0, 7, 57, 70, 300]
    batches = ((X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True))  # a generator
    result = spectrum(model, loss_fn, batches, exact_threshold=0, merge_batches=merge, seed=1)
    evals = torch.linalg.eigvalsh(reference(model, loss_fn, X, y)).numpy()
    assert result.samples == 300
    assert rel_err(result.top, evals[::-1][:5]) < 1e-4
    assert rel_err(result.bottom, evals[:1]) < 1e-4


def test_eval_mode_and_modes_restored() -> None:
    X, y = digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10), nn.Tanh(), nn.Dropout(0.5), nn.Linear(10, 10))
    model.train()
    model[1].eval()  # a submodule in its own mode must come back as it was
    kw = {"exact_threshold": 0, "trace": False, "hvp_mode": "forward_over_reverse"}  # same engine twice
    runs = [spectrum(model, cross_entropy, [(X, y)], **kw) for _ in range(2)]
    assert runs[0].top == runs[1].top and runs[0].bottom == runs[1].bottom
    assert [m.training for m in model.modules()] == [True, True, False, True, True]
    evals = torch.linalg.eigvalsh(reference(model, cross_entropy, X, y)).numpy()  # eval-mode H
    assert rel_err(runs[0].top, evals[::-1][:5]) < 1e-4


def test_double_backward_gives_the_same_numbers() -> None:
    model, loss_fn, X, y = checkpoint("random_init")
    kw = {"exact_threshold": 0, "dtype": torch.float64}
    fwd = spectrum(model, loss_fn, [(X, y)], hvp_mode="forward_over_reverse", **kw)
    rev = spectrum(model, loss_fn, [(X, y)], hvp_mode="double_backward", **kw)
    assert (fwd.hvp_mode, rev.hvp_mode) == ("forward_over_reverse", "double_backward")
    np.testing.assert_allclose(fwd.top + fwd.bottom, rev.top + rev.bottom, rtol=1e-9)
    assert fwd.trace == pytest.approx(rev.trace, rel=1e-9)
    assert fwd.grad_norm == pytest.approx(rev.grad_norm, rel=1e-9)
    assert fwd.hg_norm == pytest.approx(rev.hg_norm, rel=1e-9)
    assert fwd.hvps == rev.hvps


class _NoForwardTanh(torch.autograd.Function):
    """tanh with a backward formula but no jvp: forward-mode AD raises on it."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(output)  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (1 - out * out)


class _CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_NoForwardTanh.apply(self.a(x)))


@pytest.mark.parametrize("case", ["custom_function", "torch_mse_loss"])
def test_falls_back_to_double_backward_without_forward_mode(case: str) -> None:
    X, y = random_regression()
    torch.manual_seed(0)
    model: nn.Module = _CustomNet() if case == "custom_function" else tanh_mlp([6, 16, 3], seed=0)
    loss_fn: Callable = mse if case == "custom_function" else nn.MSELoss()
    kw = {"exact_threshold": 0, "dtype": torch.float64, "trace": False}
    with pytest.raises(RuntimeError):
        spectrum(model, loss_fn, [(X, y)], hvp_mode="forward_over_reverse", **kw)
    result = spectrum(model, loss_fn, [(X, y)], **kw)
    assert result.hvp_mode == "double_backward"
    evals = torch.linalg.eigvalsh(reference(model, loss_fn, X, y)).numpy()
    assert rel_err(result.top, evals[::-1][:5]) < 1e-6
    again = spectrum(model, loss_fn, [(X, y)], **kw)  # remembered: no second failed attempt
    assert again.hvp_mode == "double_backward" and again.top == result.top


# -------------------------------------------------------------------------- density, serialization


@pytest.mark.parametrize("threshold", [0, 5000])
def test_density_is_normalized(threshold: int) -> None:
    model, loss_fn, X, y = checkpoint("random_sgd")
    result = spectrum(model, loss_fn, [(X, y)], density=True, exact_threshold=threshold, trace=False)
    assert result.density is not None
    grid, values = np.array(result.density["grid"]), np.array(result.density["values"])
    assert np.all(np.diff(grid) > 0) and np.all(values >= 0)
    assert float(((values[1:] + values[:-1]) * np.diff(grid)).sum() / 2) == pytest.approx(1, abs=1e-6)
    assert grid[0] < result.bottom[0] and result.top[0] < grid[-1]
    mean = float(((grid * values)[1:] + (grid * values)[:-1]) @ np.diff(grid) / 2)
    exact_mean = float(torch.trace(reference(model, loss_fn, X, y))) / result.n_params
    assert mean == pytest.approx(exact_mean, abs=0.25 * (result.top[0] - result.bottom[0]))


def test_to_dict_is_json_safe() -> None:
    result, _, _ = lanczos_case("saddle_zero_init")
    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "escape_direction" not in d and d["has_escape_direction"] is True
    back = json.loads(text)
    assert back["method"] == "lanczos" and back["top"] == result.top and back["hvps"] == result.hvps
    for key in ("bottom", "trace", "trace_stderr", "seconds", "n_params", "samples", "grad_norm", "hg_norm"):
        assert key in back
    assert math.isfinite(back["seconds"])
    model, loss_fn, X, y = linear_saddle()
    no_vec = spectrum(model, loss_fn, [(X, y)], exact_threshold=0, keep_vectors=False)
    assert no_vec.escape_direction is None


@pytest.mark.parametrize("hidden", [0, 3, 10])
def test_the_default_method_is_never_the_costlier_one(hidden: int) -> None:
    """At its defaults ``spectrum`` picks the full Hessian only where it costs fewer HVPs than
    Lanczos would need (a 30-parameter linear model), Lanczos above (235 and 760 parameters); either
    way its HVP count is within 1.5x of the cheaper method forced, and the answer agrees with it."""
    torch.manual_seed(0)
    X = torch.randn(256, 2 if hidden == 0 else 64)
    y = torch.randint(0, 10, (256,))
    model = (
        nn.Linear(2, 10)
        if hidden == 0
        else nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    )
    n = sum(p.numel() for p in model.parameters())
    default = spectrum(model, cross_entropy, [(X, y)], trace=False, seed=1)
    exact = spectrum(model, cross_entropy, [(X, y)], trace=False, seed=1, exact_threshold=10**9)
    lanczos = spectrum(model, cross_entropy, [(X, y)], trace=False, seed=1, exact_threshold=0)
    assert default.method == ("exact" if n <= 60 else "lanczos")
    assert default.hvps <= 1.5 * min(exact.hvps, lanczos.hvps)
    assert np.allclose(default.top, exact.top, rtol=1e-3)
