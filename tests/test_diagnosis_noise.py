"""A loss near chance on labels that carry no signal is the data's noise, not underfitting.

The run, the k-NN reference and the probe runs are the service's own (``Trainer``,
``reference_scores``, ``run_probes``), in this process; only the database is left out."""

from __future__ import annotations

import torch

from models.spec import JobSpec
from worker.data import load_builtin, prepare
from worker.diagnosis import diagnose
from worker.diagnosis.evidence import from_points
from worker.diagnosis.probes import run_probes
from worker.diagnosis.reference import reference_scores
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")


def diagnosed(body: dict) -> list:
    spec = JobSpec.model_validate(body)
    raw = load_builtin(spec.data.dataset, dict(spec.data.params or {}), spec.seed)
    data = prepare(spec.data, raw, spec.seed, None)
    recorder = MemoryRecorder()
    summary = Trainer(spec, data, recorder, CPU).fit()
    summary["reference"] = reference_scores(data, spec.seed)
    ev = from_points(spec, summary, recorder.points, [])
    ev.summary["probes"] = run_probes(spec, data, ev)
    return diagnose(ev)


def spec_on(label_noise: float, optimizer: dict) -> dict:
    return {
        "seed": 0,
        # Three blobs that barely overlap; label_noise replaces that share of labels at random.
        "data": {
            "dataset": "blobs",
            "params": {"n_samples": 600, "cluster_std": 1.0},
            "scaling": "standardize",
            "label_noise": label_noise,
        },
        "model": {"arch": "mlp", "hidden": [16], "activation": "relu"},
        "optimizer": optimizer,
        "batch_size": 32,
        "epochs": 12,
        "analysis": {"hessian": {"enabled": False}},
    }


def test_a_loss_at_chance_on_noisy_labels_is_a_good_fit_when_the_probes_find_nothing_better() -> None:
    # Heavily overlapping blobs with 10% of labels replaced, batch 1 and momentum: the loss stays at
    # chance, the k-NN does no better on the training rows (cross-validated), and neither the
    # standard recipe nor a larger model trains clearly lower. Nothing is left to fix but the
    # oscillation, which stays a finding.
    body = spec_on(0.1, {"name": "sgd", "lr": 0.02, "momentum": 0.9})
    body["data"]["params"] = {"n_samples": 400, "cluster_std": 3.0}
    body |= {"model": {"arch": "mlp", "hidden": [50], "activation": "relu"}, "batch_size": 1, "epochs": 20}
    result = diagnosed(body)
    verdict = result[0]
    assert verdict.code == "good_fit", (verdict.code, verdict.evidence)
    assert verdict.evidence["train_loss"] >= 0.9 * verdict.evidence["chance_loss"]
    # The experiment that decided it is shown with the verdict.
    probes = verdict.evidence["probes"]["probes"]
    assert {p["what"] for p in probes} == {"tuned_optimizer", "larger_model"}
    assert not any(p["clearly_lower"] for p in probes)
    assert "oscillation" in {x.code for x in result[1:]}
