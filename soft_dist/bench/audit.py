"""`soft-dist bench audit`: how well, and at what compute, three methods find the wrong training labels.

On the same noisy digits splits (default: 30% and 50% symmetric, 30% asymmetric noise), with the same
noise table for all three:

* ``soft_audit``: train SOFT, then `soft-dist audit` (one inference pass; every score is measured, the
  default score is the headline);
* ``ce_loss``: train plain CE, rank by its per-sample loss on the given label (-log p(given), the same
  ranking as 1 - p(given));
* ``cleanlab_kfold``: confident learning as its users run it: K-fold cross-validation of plain CE on the
  training split (K trainings on K-1 folds each, stratified by the given label), out-of-sample
  probabilities for every training sample, then ``cleanlab.filter.find_label_issues``. Its flagged
  samples rank first (in cleanlab's self-confidence order), the rest by ``get_label_quality_scores``, so
  that it ranks every sample like the others.

Each method's ``compute_s`` is the wall time of its training(s) plus its inference (plus cleanlab's own
call), in this process, on this machine. Results per setting and method are kept in ``--work-dir`` and
reused, so the benchmark can be run in pieces (``--settings sym30``, then the others). cleanlab is AGPL
and an optional extra (``pip install 'soft-dist[bench-audit]'``): only this benchmark imports it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# The asymmetric setting's map (the class each digit is mistaken for): pairs of look-alike digits in the
# spirit of the usual MNIST asymmetric noise (2->7, 3->8, 5<->6, 7->1), extended to every class because
# soft-dist flips the same share of every class.
DIGITS_CLASS_MAP = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}
SETTINGS = {
    "sym30": ("symmetric", 0.3),
    "sym50": ("symmetric", 0.5),
    "asym30": ("asymmetric", 0.3),
}
METHODS = ("soft_audit", "ce_loss", "cleanlab_kfold")
DEFAULT_OVERRIDES = ["train.epochs=6", "method.stage1_epochs=2", "train.workers=1"]  # the digits short schedule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, help="digits shard folder (default: written into --work-dir)")
    parser.add_argument("--config", default="digits_cpu", metavar="NAME|FILE", help="run config (default digits_cpu)")
    parser.add_argument("--settings", default="sym30,sym50,asym30",
                        help=f"comma-separated noise settings out of {list(SETTINGS)} (default all)")
    parser.add_argument("--folds", type=int, default=5, help="K of cleanlab's K-fold cross-validation (default 5)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-audit"),
                        help="runs and per-method results, reused when present (default runs/bench-audit)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"config overrides for every training (after {' '.join(DEFAULT_OVERRIDES)})")


def setting_overrides(name: str) -> list[str]:
    """The noise overrides of a setting name."""
    if name not in SETTINGS:
        raise SystemExit(f"soft-dist bench audit: unknown setting {name!r}; choose from {list(SETTINGS)}")
    kind, rate = SETTINGS[name]
    out = [f"noise.kind={kind}", f"noise.rate={rate}"]
    if kind == "asymmetric":
        body = ", ".join(f"{k}: {v}" for k, v in DIGITS_CLASS_MAP.items())
        out += [f"noise.class_map={{{body}}}", "noise.confusion_file=null"]
    return out


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number [N] for labels [N]: each class shuffled with ``seed`` and dealt round-robin."""
    rng = np.random.Generator(np.random.PCG64(seed))
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        fold[members[rng.permutation(len(members))]] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return fold


def cleanlab_ranking_score(issue_order: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """A score [N] (higher = more suspicious) that ranks cleanlab's flagged samples ``issue_order`` [M]
    (most suspicious first) above all others, and the others by label quality [N] (low = suspicious)."""
    score = 1.0 - np.asarray(quality, dtype=np.float64)  # in [0, 1]
    m = len(issue_order)
    score[np.asarray(issue_order, dtype=np.int64)] = 2.0 + (m - np.arange(m)) / max(m, 1)  # above 2, in order
    return score


def _fit(cfg, loaders, num_classes: int, table, run_dir: Path) -> float:
    """Train into ``run_dir`` in this process; the wall seconds."""
    from soft_dist.train.local import fit_local

    start = time.perf_counter()
    try:
        fit_local(cfg, loaders, num_classes, table, run_dir, progress=False, verbose=False)
    finally:
        loaders.close()
    return time.perf_counter() - start


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        print(f"  reusing {path}", flush=True)
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def _soft_audit(cfg, table, num_classes, folder: Path) -> dict:
    from soft_dist.audit.main import audit_run
    from soft_dist.data.run_loaders import shard_loaders

    train_s = _fit(cfg, shard_loaders(cfg, diagnostics=False), num_classes, table, folder / "run")
    start = time.perf_counter()
    record = audit_run(folder / "run", folder / "audit", top=50, echo=None)
    audit_s = time.perf_counter() - start
    measured = record["measured"]
    return {**measured[record["score"]], "score": record["score"], "all_scores": measured,
            "estimated_noise_rate": record["estimated_noise"]["rate"], "true_noise_rate": record["truth"]["rate"],
            "train_s": train_s, "inference_s": audit_s, "compute_s": train_s + audit_s}


def with_headline(result: dict, score: str) -> dict:
    """A soft_audit result whose headline numbers are those of ``score`` (every score is measured and
    cached, so a cached result made under another default still reports the current one)."""
    return {**result, **result["all_scores"][score], "score": score}


def _ce_loss(cfg, table, num_classes, folder: Path) -> dict:
    from soft_dist.audit.report import evaluate_scores
    from soft_dist.audit.run import load_run, network_outputs
    from soft_dist.data.run_loaders import shard_loaders

    train_s = _fit(cfg, shard_loaders(cfg, diagnostics=False), num_classes, table, folder / "run")
    start = time.perf_counter()
    run = load_run(folder / "run")
    out = network_outputs(run, echo=None)
    inference_s = time.perf_counter() - start
    clean = run.given_and_clean(out.idx)[1]
    measured = evaluate_scores(out, clean)["student_prob"]  # 1 - p(given): the loss's ranking
    return {**measured, "train_s": train_s, "inference_s": inference_s, "compute_s": train_s + inference_s}


def _cleanlab_kfold(cfg, table, num_classes, folder: Path, folds: int) -> dict:
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as err:
        raise SystemExit("soft-dist bench audit: the cleanlab baseline needs cleanlab (AGPL, not a soft-dist "
                         "dependency): pip install cleanlab   (or: pip install 'soft-dist[bench-audit]')") from err
    from soft_dist.audit.run import as_selection, forward_share
    from soft_dist.audit.scores import measure
    from soft_dist.metrics import softmax
    from soft_dist.data.format import SplitSelection, load_manifest
    from soft_dist.data.loader import Loaders, build_eval_loader, build_train_loader
    from soft_dist.data.splits import run_splits
    from soft_dist.data.stage import local_shards
    from soft_dist.storage import RunStore
    from soft_dist.train.checkpoints import latest_state

    shards = local_shards(cfg.data.shards, cfg.data.cache_dir, cfg.data.cache_max_gb)
    manifest = load_manifest(shards)
    splits = run_splits(manifest, cfg.data)
    train = as_selection(manifest, splits["train"])
    lookup = table.lookup()
    idx = np.sort(train.idx)
    given = lookup[idx]
    clean = table.clean[np.searchsorted(table.idx, idx)]
    fold = stratified_folds(given, folds, cfg.train.seed)
    probs = np.zeros((len(idx), num_classes))
    train_s = inference_s = 0.0
    for k in range(folds):
        print(f"  cleanlab fold {k + 1}/{folds}: CE on {int((fold != k).sum())} images", flush=True)
        fit_sel = SplitSelection("train", train.sources, idx[fold != k])
        held = SplitSelection("train", train.sources, idx[fold == k])
        loaders = Loaders(
            train=build_train_loader(shards, fit_sel, cfg.data, cfg.train.batch_size, seed=cfg.train.seed),
            val=build_eval_loader(shards, splits["val"], cfg.data, cfg.train.eval_batch_size), shards_dir=str(shards))
        run_dir = folder / f"fold_{k}"
        train_s += _fit(cfg, loaders, num_classes, table, run_dir)
        start = time.perf_counter()
        raw = forward_share(latest_state(RunStore(run_dir)), cfg, num_classes, shards, held,
                            cfg.train.eval_batch_size)
        inference_s += time.perf_counter() - start
        probs[np.searchsorted(idx, raw["idx"])] = softmax(raw["student"])
    start = time.perf_counter()
    issues = find_label_issues(given, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    cleanlab_s = time.perf_counter() - start
    wrong = given != clean
    flagged = np.zeros(len(idx), dtype=bool)
    flagged[issues] = True
    return {**measure(cleanlab_ranking_score(issues, quality), wrong),
            "auroc_label_quality_only": measure(1.0 - quality, wrong)["auroc"],
            "flagged": int(flagged.sum()), "precision_of_flagged": float(wrong[flagged].mean()) if flagged.any() else None,
            "recall_of_flagged": float((flagged & wrong).sum() / max(wrong.sum(), 1)), "folds": folds,
            "train_s": train_s, "inference_s": inference_s + cleanlab_s, "compute_s": train_s + inference_s + cleanlab_s}


def run_setting(name: str, args: argparse.Namespace, shards: Path) -> dict:
    """method -> result for one noise setting (each method's result cached in --work-dir)."""
    from soft_dist.audit.scores import DEFAULT_SCORE
    from soft_dist.config import load_config
    from soft_dist.noise.setup import make_noise_table

    base = [f"data.shards={shards}", *DEFAULT_OVERRIDES, *setting_overrides(name), *args.overrides]
    soft_cfg = load_config(args.config, [*base, "method.name=soft"])
    ce_cfg = load_config(args.config, [*base, "method.name=ce"])
    table, num_classes = make_noise_table(soft_cfg)  # one table for all three methods (noise ignores the method)
    folder = args.work_dir / name
    print(f"[bench audit] {name}: {SETTINGS[name][0]} noise {SETTINGS[name][1]:.0%}, "
          f"{int(table.flipped.sum())} flipped labels in the train+val table", flush=True)
    out = {}
    print(f"[bench audit] {name}: SOFT training + audit", flush=True)
    soft = _cached(folder / "soft_audit.json", lambda: _soft_audit(soft_cfg, table, num_classes, folder / "soft"))
    out["soft_audit"] = with_headline(soft, DEFAULT_SCORE)
    print(f"[bench audit] {name}: CE training + loss ranking", flush=True)
    out["ce_loss"] = _cached(folder / "ce_loss.json", lambda: _ce_loss(ce_cfg, table, num_classes, folder / "ce"))
    print(f"[bench audit] {name}: cleanlab on {args.folds}-fold out-of-sample CE probabilities", flush=True)
    out["cleanlab_kfold"] = _cached(folder / f"cleanlab_k{args.folds}.json",
                                    lambda: _cleanlab_kfold(ce_cfg, table, num_classes, folder / f"cv{args.folds}",
                                                            args.folds))
    return out


def markdown_table(settings: dict) -> str:
    """The benchmark as a markdown table: one row per setting and method; compute split into the
    training(s) and the inference (the audit's training is the SOFT run a user trains anyway)."""
    lines = ["| noise | method | AUROC | precision@k | recall@2k | k | training (s) | inference (s) | total (s) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, methods in settings.items():
        for method, r in methods.items():
            label = method + (f" ({r['score']})" if "score" in r else "")
            lines.append(f"| {name} | {label} | {r['auroc']:.4f} | {r['precision_at_k']:.4f} | "
                         f"{r['recall_at_2k']:.4f} | {r['k']} | {r['train_s']:.0f} | {r['inference_s']:.1f} | "
                         f"{r['compute_s']:.0f} |")
    return "\n".join(lines)


def scores_table(settings: dict) -> str:
    """AUROC / precision@k of every audit score (rows) in every setting (columns), and their mean AUROC."""
    names = list(settings)
    scores = list(next(iter(settings.values()))["soft_audit"]["all_scores"])
    lines = ["| score | " + " | ".join(f"{n} AUROC / P@k" for n in names) + " | mean AUROC |",
             "| --- |" + " ---: |" * (len(names) + 1)]
    for score in scores:
        cells = [settings[n]["soft_audit"]["all_scores"].get(score) for n in names]
        mean = np.mean([c["auroc"] for c in cells if c])
        lines.append(f"| {score} | " + " | ".join(f"{c['auroc']:.4f} / {c['precision_at_k']:.4f}" if c else "-"
                                                  for c in cells) + f" | {mean:.4f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    from soft_dist.shard.build import ensure_digit_shards

    if args.folds < 2:
        raise SystemExit("soft-dist bench audit: --folds must be >= 2")
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    shards = args.shards or ensure_digit_shards(args.work_dir / "digits32")
    settings = {name: run_setting(name, args, shards) for name in names}
    table = markdown_table(settings) + "\n\nEvery audit score of the SOFT runs:\n\n" + scores_table(settings)
    print(table)
    (args.work_dir / "audit_bench.md").write_text(table + "\n")
    # Only the headline numbers in the result (the harness prints every numeric leaf); all_scores stay in
    # the per-method JSON files of --work-dir.
    slim = {name: {m: {k: v for k, v in r.items() if k != "all_scores"} for m, r in methods.items()}
            for name, methods in settings.items()}
    all_scores = {name: methods["soft_audit"]["all_scores"] for name, methods in settings.items()}
    return {"settings": slim, "soft_audit_all_scores": all_scores, "folds": args.folds,
            "config": args.config, "overrides": [*DEFAULT_OVERRIDES, *args.overrides]}
