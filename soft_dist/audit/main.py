"""`soft-dist audit` as a function: read the run, score its training samples, write the files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from soft_dist.audit import report
from soft_dist.audit.scores import DEFAULT_SCORE

HTML_FILE = "audit.html"


def audit_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    shards: str | None = None,
    score: str | None = None,
    top: int = 100,
    workers: int = 1,
    export_labels: str | Path | None = None,
    export_format: str = "table",
    relabel: int | None = None,
    loader: str | None = None,
    batch_size: int = 256,
    num_threads: int | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """Audit ``run_dir`` into the folder ``out`` (audit.csv, audit.json, audit.html, noise_transition.png)
    and, with ``export_labels``, write the relabelled noise list there. Returns audit.json's record.

    ``score`` None is the default score, or, for a run without a teacher (plain CE), its student
    counterpart; a score the run cannot give is a ConfigError naming --score."""
    from soft_dist.audit.html import jpeg_bytes, write_html
    from soft_dist.audit.run import load_run, network_outputs
    from soft_dist.data.splits import run_splits
    from soft_dist.noise.lists import list_text, read_sample_index

    from soft_dist.config import ConfigError

    if relabel is not None and relabel < 0:  # checked before the scoring pass, not after it
        raise ConfigError("--relabel", f"must be >= 0, got {relabel}")
    say = echo or (lambda _line: None)
    started = time.perf_counter()
    run = load_run(run_dir, shards=shards, loader=loader)
    classes = run.classes
    score = choose_score(score, has_teacher=run.state["learner"].get("teacher") is not None,
                         has_head=run.head_trained)
    say(f"[audit] {run.run_dir}: method {run.cfg.method.name}, checkpoint of epoch {int(run.state['epoch'])}, "
        f"{len(run.train.idx)} training images, noise table kind={run.table.kind}")
    outputs = network_outputs(run, workers=workers, batch_size=batch_size, num_threads=num_threads, echo=echo)
    clean = run.given_and_clean(outputs.idx)[1] if run.truth_known else None
    audit = report.rank(outputs, score, clean)
    seconds_scoring = time.perf_counter() - started

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = read_sample_index(run.manifest, run_splits(run.manifest, run.cfg.data))
    sources = dict(zip(index.idx.tolist(), index.source))
    csv_path = report.write_csv(audit, classes, sources, out / report.CSV_FILE)
    png_path = report.plot_transition(audit.noise, classes, out / report.PNG_FILE, audit.source)
    shown = audit.idx[:top]
    html_path = write_html(audit, classes, jpeg_bytes(run.shards_dir, run.train, shown), sources, out / HTML_FILE,
                           f"soft-dist audit of {Path(run.run_dir).name}", top)
    say(f"[audit] wrote {csv_path}, {html_path} (top {len(shown)}), {png_path}")

    record = {
        "run_dir": run.run_dir, "method": run.cfg.method.name, "checkpoint_epoch": int(run.state["epoch"]),
        "num_samples": len(audit), "classes": list(classes), "score": audit.score_name,
        "probabilities": audit.source, "workers": workers, "seconds": round(seconds_scoring, 3),
        "estimated_noise": report.noise_record(audit.noise, classes),
        "files": {"csv": report.CSV_FILE, "html": HTML_FILE, "transition_png": report.PNG_FILE},
    }
    if clean is not None:
        record["truth"] = report.truth_record(outputs.given, clean, classes, run.table)
        record["measured"] = report.evaluate_scores(outputs, clean)
        m = record["measured"][audit.score_name]
        say(f"[audit] against the noise table ({m['k']} wrong labels): AUROC {m['auroc']:.4f}, precision@k "
            f"{m['precision_at_k']:.4f}, recall@2k {m['recall_at_2k']:.4f} (score {audit.score_name})")

    if export_labels is not None:
        count = audit.noise["num_noisy"] if relabel is None else int(relabel)
        table = report.relabelled_table(run.table, audit, count)
        path = Path(export_labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(list_text(table, index, export_format))
        changed = int(np.sum(audit.given[:count] != audit.suggested[:count]))
        record["export"] = {"file": str(path), "format": export_format, "relabelled_top": count,
                            "labels_changed": changed,
                            "use_with": f"noise.kind=file noise.file={path} noise.file_format={export_format}"}
        say(f"[audit] wrote {path}: the top {count} samples take their suggested label ({changed} change); "
            f"train on it with {record['export']['use_with']}")
    report.write_json(record, out / report.JSON_FILE)
    est = audit.noise
    say(f"[audit] estimated noise rate {est['rate']:.3f} (~{est['num_noisy']} of {len(audit)} labels); "
        f"wrote {out / report.JSON_FILE}")
    return record


def choose_score(score: str | None, has_teacher: bool, has_head: bool) -> str:
    """The score to rank by: ``score`` if the run can give it, the default (or without a teacher, the
    default's student counterpart) when None; ConfigError otherwise."""
    from soft_dist.audit.scores import score_source
    from soft_dist.config import ConfigError

    if score is None:
        return DEFAULT_SCORE if has_teacher else "student_" + DEFAULT_SCORE.rsplit("_", 1)[1]
    source = score_source(score)
    if source in ("teacher", "mean") and not has_teacher:
        raise ConfigError("--score", f"{score} needs the run's teacher, and this run has none (a method "
                                     "without a mean teacher); use a student_* score")
    if source is None and not has_head:
        raise ConfigError("--score", "head_weight needs a trained uncertainty head, and this run has none "
                                     "(its method has no head, or it stopped before stage 2)")
    return score
