"""How far the labels themselves agree from seed to seed: the accuracy of a rule that would know
everything about a run's configuration and nothing about the run.

Each run's label is predicted from the labels of the *other* seeds of its configuration (the same
family on the same dataset): the majority verdict, and every finding that more than half of them
carry. A rule can only beat this by reading the run's own evidence, since the labels of a
configuration change with the seed wherever a counterfactual lands near a threshold (30% lower,
10% of chance, twice the seed-to-seed spread). The figures say which targets are within reach of
a rule that decides by configuration, and which ask for per-seed evidence.

    .venv/bin/python -m benchmarks.diagnosis.agreement
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from benchmarks.diagnosis.label import LABELS


def by_configuration(labels: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The labelled runs of each family-on-dataset, keyed "family/dataset"."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for case_id, label in labels.items():
        groups[case_id.rsplit("/", 1)[0]].append((case_id, label))
    return groups


def leave_one_seed_out(labels: dict[str, Any]) -> dict[str, Any]:
    """Verdict accuracy, and per finding code true/false positives and misses, of predicting each
    run from the other seeds of its configuration."""
    right = total = 0
    counts: dict[str, Counter] = defaultdict(Counter)
    for runs in by_configuration(labels).values():
        for case_id, label in runs:
            others = [other for other_id, other in runs if other_id != case_id]
            if not others:
                continue
            majority = Counter(o["verdict"] for o in others).most_common(1)[0][0]
            right += majority == label["verdict"]
            total += 1
            for code in {c for o in others for c in o["findings"]} | set(label["findings"]):
                predicted = 2 * sum(code in o["findings"] for o in others) > len(others)
                actual = code in label["findings"]
                if predicted or actual:
                    counts[code]["tp" if predicted and actual else "fp" if predicted else "fn"] += 1
    return {"right": right, "total": total, "findings": counts}


def main() -> int:
    labels = json.loads(LABELS.read_text())
    result = leave_one_seed_out(labels)
    right, total = result["right"], result["total"]
    print(f"verdict from the other seeds' majority: {right / total:.1%} ({right}/{total})")
    print(f"{'finding':32s} precision  recall")
    for code, c in sorted(result["findings"].items()):
        precision = c["tp"] / max(1, c["tp"] + c["fp"])
        recall = c["tp"] / max(1, c["tp"] + c["fn"])
        print(f"{code:32s} {precision:9.2f}  {recall:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
