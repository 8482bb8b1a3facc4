"""False alarms of the diagnosis engine on healthy runs.

Healthy = well-posed setups a practitioner would sign off: standardized features, an adequate MLP,
Adam at a standard rate, training long enough to converge, on every built-in dataset and several
seeds. Each run goes through the same engine as the service (training, spectra at init, every 10
epochs and at the end, k-NN reference, rules). A false alarm is a verdict other than good_fit, or any
warning- or error-level finding.

    .venv/bin/python benchmarks/false_alarms.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models.spec import JobSpec  # noqa: E402
from worker.data import load_builtin, prepare  # noqa: E402
from worker.diagnosis import diagnose  # noqa: E402
from worker.diagnosis.evidence import from_points  # noqa: E402
from worker.diagnosis.reference import reference_scores  # noqa: E402
from worker.recorders import MemoryRecorder  # noqa: E402
from worker.training import Trainer  # noqa: E402


def healthy(dataset: str, hidden: list[int], lr: float, batch: int, epochs: int, **data) -> dict:
    return {
        "name": f"healthy-{dataset}",
        "data": {"dataset": dataset, "scaling": "standardize", **data},
        "model": {"hidden": hidden},
        "optimizer": {"name": "adam", "lr": lr},
        "batch_size": batch,
        "epochs": epochs,
        "analysis": {"hessian": {"every_epochs": 10, "samples": 512}},
    }


CONFIGS = [
    healthy("digits", [128], 1e-3, 64, 30),
    healthy("iris", [32], 1e-2, 16, 40),
    healthy("wine", [32], 1e-2, 16, 30),
    healthy("breast_cancer", [32], 1e-3, 32, 40),
    healthy("moons", [64, 64], 1e-2, 32, 40),
    healthy("circles", [64, 64], 1e-2, 32, 40),
    healthy("blobs", [32], 1e-2, 32, 30),
    healthy("gaussian_regression", [64], 1e-3, 32, 60),
]


def run(spec_dict: dict, seed: int) -> tuple[str, list[tuple[str, str]]]:
    spec = JobSpec.model_validate(spec_dict | {"seed": seed})
    data = prepare(spec.data, load_builtin(spec.data.dataset, spec.data.params, spec.seed), spec.seed)
    recorder = MemoryRecorder(spectra=True)
    summary = Trainer(spec, data, recorder, torch.device("cpu")).fit()
    evidence = from_points(spec, summary, recorder.points, recorder.spectra)
    summary["reference"] = reference_scores(
        data, spec.seed, spec.model.computes_linear_function, train_loss=evidence.final("train/loss")
    )
    result = diagnose(evidence)
    return result[0].code, [(f.code, f.severity) for f in result[1:]]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = alarms = 0
    for config in CONFIGS:
        for seed in args.seeds:
            start = time.perf_counter()
            verdict, findings = run(config, seed)
            warnings = [code for code, severity in findings if severity != "info"]
            alarm = verdict != "good_fit" or bool(warnings)
            runs, alarms = runs + 1, alarms + alarm
            infos = [code for code, severity in findings if severity == "info"]
            print(
                f"{'ALARM' if alarm else 'ok   '} {config['data']['dataset']:20s} seed {seed}  {verdict:26s} "
                f"warnings={warnings} info={infos} ({time.perf_counter() - start:.1f}s)",
                flush=True,
            )
    print(
        f"false-positive rate: {alarms}/{runs} = {alarms / runs:.1%} healthy runs with a non-good_fit verdict "
        "or a warning-level finding"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
