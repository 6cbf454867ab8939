"""The audit's files: audit.csv (every training sample, most suspicious first), audit.json (noise
estimate, and the measurement when the truth is known), the transition matrix as a PNG, and the given
labels with the top suggestions applied as a noise list that ``noise.file`` reads back."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soft_dist.audit.scores import (NetworkOutputs, available_scores, compute_score, estimate_noise, measure,
                                    noise_from_truth, ranking, score_source)
from soft_dist.noise.table import NoiseTable
from soft_dist.safe_text import csv_row

CSV_FILE = "audit.csv"
JSON_FILE = "audit.json"
PNG_FILE = "noise_transition.png"
CSV_COLUMNS = ("idx", "key", "given_label", "suggested_label", "score", "given_class", "suggested_class", "source")
TRUTH_COLUMNS = ("clean_label", "clean_class", "mislabeled")


@dataclass
class Audit:
    """One audit: rows in ranked order (most likely mislabeled first), all arrays [N].

    ``noise`` is :func:`soft_dist.audit.scores.estimate_noise` on the probabilities of ``source``."""

    score_name: str
    source: str  # teacher | mean | student: the probabilities behind the suggestions and the estimate
    idx: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    noise: dict
    clean: np.ndarray | None = None  # when the truth is known

    def __len__(self) -> int:
        return len(self.idx)


def rank(out: NetworkOutputs, score_name: str, clean: np.ndarray | None = None) -> Audit:
    """Rank ``out``'s samples by ``score_name``. Suggestions and the noise estimate come from the score's
    own probabilities (head_weight: the teacher's, or the student's without a teacher)."""
    score = compute_score(score_name, out)
    if score is None:
        raise ValueError(f"score {score_name!r} needs what this run lacks (a teacher, or a trained uncertainty "
                         f"head); available: {sorted(available_scores(out))}")
    source = score_source(score_name) or ("teacher" if out.teacher is not None else "student")
    probs = out.probs(source)
    suggested = probs.argmax(axis=1)  # equal to the given label when the network agrees with it
    order = ranking(score)
    return Audit(score_name, source, out.idx[order], out.given[order], suggested[order], score[order],
                 estimate_noise(probs, out.given), None if clean is None else np.asarray(clean)[order])


def evaluate_scores(out: NetworkOutputs, clean: np.ndarray) -> dict:
    """score name -> AUROC / precision@k / recall@2k against the truth (k = number of wrong given labels)."""
    wrong = out.given != np.asarray(clean)
    return {name: measure(s, wrong) for name, s in available_scores(out).items()}


def write_csv(audit: Audit, classes: tuple[str, ...], sources: dict[int, str], path: Path) -> Path:
    """audit.csv: CSV_COLUMNS (then TRUTH_COLUMNS when the truth is known), one row per sample, ranked."""
    from soft_dist.data.format import sample_key

    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(csv_row(CSV_COLUMNS + (TRUTH_COLUMNS if audit.clean is not None else ())))
        for r in range(len(audit)):
            i, g, s = int(audit.idx[r]), int(audit.given[r]), int(audit.suggested[r])
            row = [i, sample_key(i), g, s, f"{audit.score[r]:.6f}", classes[g], classes[s], sources.get(i, "")]
            if audit.clean is not None:
                c = int(audit.clean[r])
                row += [c, classes[c], int(c != g)]
            w.writerow(csv_row(row))
    return path


def _matrix(m: np.ndarray, digits: int = 4) -> list[list[float]]:
    return [[round(float(v), digits) for v in row] for row in np.asarray(m)]


def noise_record(noise: dict, classes: tuple[str, ...]) -> dict:
    """The estimate as JSON: overall rate, per given class, the joint counts and the transition matrix."""
    return {
        "rate": round(noise["rate"], 4),
        "num_noisy": noise["num_noisy"],
        "rate_per_class": {c: round(float(r), 4) for c, r in zip(classes, noise["rate_per_class"])},
        "joint_counts": {"rows": "given class", "columns": "estimated true class", "matrix": _matrix(noise["joint"], 2)},
        "transition": {"rows": "true class", "columns": "given class", "meaning": "P(given | true)",
                       "matrix": _matrix(noise["transition"])},
        "thresholds": {c: round(float(t), 4) for c, t in zip(classes, noise["thresholds"])},
    }


def truth_record(given: np.ndarray, clean: np.ndarray, classes: tuple[str, ...], table: NoiseTable) -> dict:
    truth = noise_from_truth(given, clean, len(classes))
    return {"source": f"noise table (kind={table.kind}, rate={table.rate}, seed={table.seed})",
            "num_mislabeled": int((given != clean).sum()), "rate": round(truth["rate"], 4),
            "rate_per_class": {c: round(float(r), 4) for c, r in zip(classes, truth["rate_per_class"])},
            "joint_counts": {"rows": "given class", "columns": "clean class", "matrix": _matrix(truth["joint"], 0)}}


# What the audit's probability sources are, in words for a picture's title.
SOURCE_WORDS = {"teacher": "the teacher's predictions", "student": "the student's predictions",
                "mean": "the mean of the teacher's and the student's predictions"}


def plot_transition(noise: dict, classes: tuple[str, ...], path: Path, source: str) -> Path:
    """The estimated transition matrix P(given | true) as an annotated heat map with a colour bar; every
    cell shows its value (0.00 too: an empty cell would not say whether it is zero or missing), and the
    title the overall estimated noise rate and, in words, which predictions the estimate comes from."""
    from soft_dist.serve.confusion_files import plot_class_matrix

    t = np.asarray(noise["transition"])
    text = [[f"{v:.2f}" for v in row] for row in t]
    title = (f"How the labels were given: for each true class (row), the share of its images given each label\n"
             f"estimated noise rate {noise['rate']:.1%}, from {SOURCE_WORDS.get(source, source)}")
    return plot_class_matrix(t, text, classes, path, title, xlabel="given class", ylabel="estimated true class",
                             cmap="Reds", dpi=100, colour_label="share of the row's images")


def relabelled_table(table: NoiseTable, audit: Audit, count: int) -> NoiseTable:
    """``table`` with the ``count`` top-ranked samples' given labels replaced by their suggestions (the
    other training and validation samples keep their given labels; the clean column is kept)."""
    noisy = table.noisy.copy()
    position = {int(i): p for p, i in enumerate(table.idx.tolist())}
    for r in range(min(count, len(audit))):
        noisy[position[int(audit.idx[r])]] = int(audit.suggested[r])
    differ = float((noisy != table.clean).mean()) if len(noisy) else 0.0
    return NoiseTable(idx=table.idx.copy(), clean=table.clean.copy(), noisy=noisy, kind="file", rate=round(differ, 6),
                      seed=table.seed, info={"relabelled": int(min(count, len(audit)))})


def write_json(record: dict, path: Path) -> Path:
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
