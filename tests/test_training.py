"""The training engine on its own (no services): exactness properties the checklist relies on."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from models.spec import JobSpec
from worker.data import fit_scaler, load_builtin, prepare
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")


def make(spec: dict, recorder: MemoryRecorder | None = None) -> Trainer:
    js = JobSpec.model_validate(spec)
    raw = load_builtin(js.data.dataset, js.data.params, js.seed)
    return Trainer(js, prepare(js.data, raw, js.seed), recorder or MemoryRecorder(), CPU)


BASE = {
    "data": {"dataset": "iris", "scaling": "standardize"},
    "model": {"hidden": [16], "dropout": 0.1},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "regularization": {"l2": 1e-3, "gradient_noise": {"c": 0.01, "r": 0.55}},
    "batch_size": 8,
    "epochs": 6,
    "checkpoints": {"every_epochs": 2},
    "analysis": {"hessian": {"enabled": False}},
}


def test_same_spec_and_seed_give_identical_metrics() -> None:
    a, b = MemoryRecorder(), MemoryRecorder()
    make(BASE, a).fit()
    make(BASE, b).fit()
    assert [(p.name, p.step, p.value) for p in a.points if not p.name.startswith("time/")] == [
        (p.name, p.step, p.value) for p in b.points if not p.name.startswith("time/")
    ]


def test_resume_from_checkpoint_matches_an_uninterrupted_run() -> None:
    full = MemoryRecorder()
    make(BASE, full).fit()
    interrupted = MemoryRecorder(stop_after_epoch=3)
    with pytest.raises(Exception, match="interrupted"):
        make(BASE, interrupted).fit()
    kind, epoch, step, _, payload = [c for c in interrupted.checkpoints if c[0] == "periodic"][-1]
    assert epoch == 2
    resumed_rec = MemoryRecorder()
    resumed = make(BASE, resumed_rec)
    resumed.restore(payload)
    resumed.fit()

    def final(rec: MemoryRecorder) -> dict[str, float]:
        return {
            p.name: p.value
            for p in rec.points
            if p.step == rec.points[-1].step and not p.name.startswith("time/")
        }

    assert final(resumed_rec) == final(full)


def test_l2_penalty_never_touches_biases_or_norm_parameters() -> None:
    spec = {**BASE, "model": {"hidden": [16, 16], "norm": "batch"}, "regularization": {"l2": 0.5}}
    trainer = make(spec)
    trainer.model.zero_grad()
    trainer.l2_penalty().backward()
    for name, p in trainer.model.named_parameters():
        is_weight = name.endswith("linear.weight") or name == "head.weight"
        assert (p.grad is not None and p.grad.abs().sum() > 0) == is_weight, name
    expected = 0.5 * 0.5 * sum(w.pow(2).sum() for w in trainer.weights)
    assert torch.allclose(trainer.l2_penalty(), expected)


def test_evaluation_output_of_a_sample_does_not_depend_on_its_batch() -> None:
    trainer = make({**BASE, "model": {"hidden": [16], "norm": "batch", "dropout": 0.5}, "epochs": 2})
    trainer.fit()
    trainer.model.eval()
    X = trainer.eval_sets["val"][0]
    with torch.no_grad():
        alone = trainer.model(X[:1])
        in_batch = trainer.model(X)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-6)


def test_gradient_noise_has_the_scheduled_standard_deviation() -> None:
    spec = {**BASE, "regularization": {"gradient_noise": {"c": 2.0, "r": 0.55}}}
    trainer = make(spec)
    for step in (0, 99):
        for p in trainer.model.parameters():
            p.grad = torch.zeros_like(p)
        trainer.add_gradient_noise(step)
        noise = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        expected = 2.0 / (1 + step) ** 0.55
        assert abs(noise.std().item() - expected) / expected < 0.1, (step, noise.std().item(), expected)


def test_scaling_is_fitted_on_training_rows_only_and_constant_features_stay_finite() -> None:
    X = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=np.float32)
    for method in ("minmax", "mean", "standardize", "unit_length"):
        out = fit_scaler(method, X).apply(X)
        assert np.isfinite(out).all(), method
    js = JobSpec.model_validate({"data": {"dataset": "wine", "scaling": "standardize"}})
    prep = prepare(js.data, load_builtin("wine", {}, 0), 0)
    assert np.allclose(prep.X_train.mean(axis=0), 0, atol=1e-4)
    assert not np.allclose(prep.X_val.mean(axis=0), 0, atol=1e-4)  # val was not used to fit


def test_unshuffled_training_visits_rows_in_file_order() -> None:
    trainer = make({**BASE, "data": {"dataset": "iris", "shuffle": False}})
    assert torch.equal(trainer.batch_order(10), torch.arange(10))
    shuffled = make(BASE)
    assert not torch.equal(shuffled.batch_order(100), torch.arange(100))


def test_divergence_is_caught_with_its_step() -> None:
    rec = MemoryRecorder()
    spec = {
        "data": {"dataset": "digits", "scaling": "standardize"},
        "model": {"hidden": [128]},
        "optimizer": {"name": "sgd", "lr": 10.0},
        "epochs": 20,
        "analysis": {"hessian": {"enabled": False}},
    }
    summary = make(spec, rec).fit()
    assert summary["diverged_step"] is not None and summary["epochs_run"] < 20
    losses = rec.series("train/batch_loss")
    assert not math.isfinite(losses[summary["diverged_step"] - 1])
    assert all(math.isfinite(v) for v in losses[: summary["diverged_step"] - 1])


def test_a_run_without_a_curriculum_logs_no_curriculum_series() -> None:
    rec = MemoryRecorder()
    make(BASE, rec).fit()
    assert "curriculum/stage" not in {p.name for p in rec.points}
    assert rec.series("train/loss")


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "exponential", "plateau"])
def test_schedules_warm_up_linearly_and_log_the_rate_per_step(name: str) -> None:
    rec = MemoryRecorder()
    spec = {**BASE, "schedule": {"name": name, "warmup_epochs": 2, "step_epochs": 1, "gamma": 0.5}}
    make(spec, rec).fit()
    lrs = rec.series("train/lr")
    steps_per_epoch = len(lrs) // 6
    warm = lrs[: 2 * steps_per_epoch]
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False)) and warm[-1] <= 0.05 + 1e-12
    if name in ("step", "cosine", "exponential"):
        assert lrs[-1] < 0.05


def test_early_stopping_ends_the_run_when_validation_stops_improving() -> None:
    spec = {
        "data": {"dataset": "digits", "scaling": "standardize", "train_size": 60},
        "model": {"hidden": [256]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 200,
        "regularization": {"early_stopping": {"patience": 5}},
        "analysis": {"hessian": {"enabled": False}},
    }
    summary = make(spec).fit()
    assert summary["stopped_early"] and summary["epochs_run"] == summary["best_epoch"] + 5


def test_curriculum_stages_use_easiest_rows_first_and_show_in_metrics() -> None:
    rec = MemoryRecorder()
    spec = {
        **BASE,
        "epochs": 4,
        "curriculum": [{"epochs": 2, "fraction": 0.5}, {"epochs": 2, "label_noise": 0.2, "lr": 0.01}],
    }
    trainer = make(spec, rec)
    assert len(trainer.stages[0].y) == round(0.5 * len(trainer.train_y)) and len(trainer.stages[1].y) == len(
        trainer.train_y
    )
    trainer.fit()
    assert rec.series("curriculum/stage") == [0.0, 0.0, 1.0, 1.0]
    lrs = rec.series("train/lr")
    assert lrs[-1] == 0.01 and lrs[0] == 0.05


GRAPHABLE = {
    "data": {"dataset": "iris", "scaling": "standardize"},
    "model": {"hidden": [16, 16], "norm": "batch"},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "regularization": {"l2": 1e-3, "grad_clip": 1.0},
    "batch_size": 16,  # 90 training rows: a short last batch every epoch
    "epochs": 6,
    "curriculum": [{"epochs": 2, "fraction": 0.5}, {"epochs": 4, "fraction": 1.0}],
    "checkpoints": {"every_epochs": 2},
    "analysis": {"hessian": {"enabled": False}},
}


def test_graph_shaped_updates_match_the_eager_loop() -> None:
    """The update that CUDA graphs capture (batch from a device counter, index_select, losses and
    norms written in place) run eagerly gives the eager loop's numbers exactly: everything a graph
    does differently from the eager loop, except the capture itself, is checked here on the CPU."""
    from worker.graphed import GraphedEpochs

    eager, shaped = MemoryRecorder(), MemoryRecorder()
    make(GRAPHABLE, eager).fit()
    trainer = make(GRAPHABLE, shaped)
    trainer.graphs = GraphedEpochs(trainer, capture=False)
    trainer.fit()

    def values(rec: MemoryRecorder) -> list[tuple[str, int, float]]:
        return [(p.name, p.step, p.value) for p in rec.points if not p.name.startswith("time/")]

    assert len(values(eager)) > 100
    assert values(shaped) == values(eager)
    assert {p.name for p in shaped.points} >= {"train/batch_grad_norm", "curriculum/stage", "train/lr"}


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"name": "adam", "lr": 1e-2, "weight_decay": 1e-3},
        {"name": "adamw", "lr": 1e-2, "weight_decay": 1e-2},
        {"name": "adagrad", "lr": 0.05, "weight_decay": 1e-3},
    ],
    ids=lambda o: o["name"],
)
def test_cpu_optimizers_run_fused_kernels_with_torch_default_arithmetic(optimizer: dict) -> None:
    """The worker's fused CPU kernels against torch.optim's default path, from the same weights on
    the same batches: the same updates up to rounding."""
    from worker.training import make_optimizer

    # No batch norm here: the bias of a layer feeding batch norm gets a gradient of pure rounding
    # noise (mathematically zero), whose sign Adam turns into a full step either way.
    trainer = make({**GRAPHABLE, "optimizer": optimizer, "curriculum": [], "model": {"hidden": [16, 16]}})
    assert trainer.optimizer.defaults["fused"] is True
    initial = copy.deepcopy(trainer.model)
    reference = copy.deepcopy(trainer.model)
    default = make_optimizer(trainer.spec, list(reference.parameters()))  # no device: torch's default
    assert not default.defaults.get("fused")
    X, y = trainer.train_X, trainer.train_y
    for start in range(0, 80, 8):
        for model, opt in ((trainer.model, trainer.optimizer), (reference, default)):
            opt.zero_grad()
            trainer.data_loss(model(X[start : start + 8]), y[start : start + 8]).backward()
            opt.step()
    params = zip(trainer.model.parameters(), reference.parameters(), initial.parameters(), strict=True)
    for fused_p, default_p, initial_p in params:
        # Rounding, not a different rule: the two disagree by under 0.1% of the distance moved.
        moved = (default_p - initial_p).abs().max().item()
        assert moved > 0 and (fused_p - default_p).abs().max().item() <= 1e-3 * moved + 1e-7


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "exponential", "plateau"])
def test_an_epochs_rates_computed_up_front_equal_the_per_update_schedule(name: str) -> None:
    trainer = make({**BASE, "schedule": {"name": name, "warmup_epochs": 1.5, "step_epochs": 1, "gamma": 0.5}})
    trainer.state.plateau.factor = 0.25  # as if the plateau schedule had decayed twice
    stage = trainer.stages[0]
    for epoch in range(4):
        per_update = [trainer.lr_for(epoch + i / 13, stage) for i in range(13)]
        assert trainer.epoch_learning_rates(epoch, 13, stage) == per_update


def test_gradient_norms_are_sampled_at_most_32_times_an_epoch() -> None:
    from tests.metric_expectations import expected_patterns

    rec = MemoryRecorder()
    spec = {"data": {"dataset": "digits"}, "model": {"hidden": [16]}, "batch_size": 1, "epochs": 2}
    trainer = make({**spec, "analysis": {"hessian": {"enabled": False}}}, rec)
    trainer.fit()
    updates = len(trainer.train_y)  # batch size 1: 1,077 updates an epoch, every 34th measured
    steps = [p.step for p in rec.points if p.name == "train/batch_grad_norm"]
    assert Trainer.grad_stats_stride(updates) == 34 and len(steps) == 2 * 32
    assert set(steps) == expected_patterns(2, updates)["grad_stats"]
    assert all(math.isfinite(v) and v > 0 for v in rec.series("train/batch_grad_norm"))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_evaluation_by_chunks_gives_the_one_pass_figures(task: str) -> None:
    """Evaluation runs in chunks (512 rows on a CPU); sums across chunks must give the whole-split
    loss and accuracy, whatever the chunk size (7 leaves a short last chunk on every split)."""
    data = {"dataset": "iris", "scaling": "standardize", "task": task}
    trainer = make({**BASE, "data": data, "model": {"hidden": [16], "norm": "batch"}, "epochs": 2})
    trainer.fit()
    trainer.eval_chunk = 10_000
    whole = trainer.evaluate()
    trainer.eval_chunk = 7
    chunked = trainer.evaluate()
    assert whole.keys() == chunked.keys() and "val/loss" in whole
    assert ("val/accuracy" in whole) == (task == "classification")
    for name, value in whole.items():
        if not name.startswith("units/"):  # measured on the first chunk's rows (UNIT_SAMPLE ≤ chunk)
            assert chunked[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
