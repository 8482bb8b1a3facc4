"""What collecting diagnostics costs: the same training run with `analysis.diagnostics` on and off.

Diagnostics = per-update gradient norms, per-layer gradient norms, and per-epoch unit statistics
(the inputs of the vanishing/exploding-gradient, dead/saturated-unit and oscillation rules).
Hessian spectra are off in both arms (they are measured separately in benchmarks/hessian.py).
Runs alternate on/off several times in one process (one torch thread, CPU time of the process);
the ratio uses the fastest run of each arm, the least disturbed by other work on the machine.
Target: overhead ≤ 5%.

    .venv/bin/python benchmarks/diagnostics_overhead.py [--repeats 5]
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
from worker.recorders import MemoryRecorder  # noqa: E402
from worker.training import Trainer  # noqa: E402

CASES = {
    "digits mlp 256-256, batch 32": {
        "data": {"dataset": "digits", "scaling": "standardize"},
        "model": {"hidden": [256, 256]},
        "optimizer": {"name": "adam", "lr": 0.001},
        "batch_size": 32,
        "epochs": 5,
    },
    "circles sigmoid 8x[16], batch 16": {
        "data": {"dataset": "circles", "scaling": "standardize"},
        "model": {"hidden": [16] * 8, "activation": "sigmoid"},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batch_size": 16,
        "epochs": 5,
    },
}


def seconds(spec_dict: dict, diagnostics: bool) -> float:
    spec = JobSpec.model_validate(
        spec_dict | {"analysis": {"diagnostics": diagnostics, "hessian": {"enabled": False}}}
    )
    data = prepare(spec.data, load_builtin(spec.data.dataset, spec.data.params, spec.seed), spec.seed)
    trainer = Trainer(spec, data, MemoryRecorder(), torch.device("cpu"))
    # CPU time of this process: other processes on a shared machine do not inflate it.
    start = time.process_time()
    trainer.fit()
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    worst = 0.0
    print(f"{'case':36s} {'off (s)':>9s} {'on (s)':>9s} {'overhead':>9s}")
    for name, spec in CASES.items():
        seconds(spec, True)  # warm-up
        off, on = [], []
        for _ in range(args.repeats):
            off.append(seconds(spec, False))
            on.append(seconds(spec, True))
        overhead = min(on) / min(off) - 1
        worst = max(worst, overhead)
        print(f"{name:36s} {min(off):9.3f} {min(on):9.3f} {overhead:9.1%}")
    print(f"{'PASS' if worst <= 0.05 else 'FAIL'}: worst overhead {worst:.1%} (target ≤ 5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
