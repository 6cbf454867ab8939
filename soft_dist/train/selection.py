"""Choosing model.pt on validation: the best epoch and branch so far, and model.pt's metadata.

After every epoch the run loop hands the validation (and test) reports to a :class:`ModelSelection`;
when the epoch beats the best so far on ``train.select_metric`` (the branch validation would choose, see
soft_dist.train.protocols.choose_branch) it becomes the new best. Every rank keeps that record (it goes
into the epoch's metrics line and results.json); rank 0 holds a :class:`ModelWriter`, which also writes
that epoch's branch to RUN/model.pt and, on resume, takes the best so far from the model.pt it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from soft_dist.config import Config, to_dict
from soft_dist.method.model import resolve_small_stem
from soft_dist.noise.table import NoiseTable
from soft_dist.storage import RunStore
from soft_dist.train.model_file import MODEL_FILE, branch_weights, config_digest, load_model, save_model
from soft_dist.train.protocols import choose_branch


@dataclass(frozen=True)
class DatasetInfo:
    """What model.pt must carry about the data it was trained on."""

    classes: tuple[str, ...]
    dataset: str = "unknown"
    alignment: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest) -> "DatasetInfo":
        args = manifest.raw.get("args", {})
        align = manifest.raw.get("alignment", {})
        return cls(tuple(manifest.classes), manifest.dataset,
                   {"method": align.get("method", "none"), "margin": align.get("margin"),
                    "shard_image_size": args.get("size"), "on_no_face": args.get("on_no_face"),
                    # predict re-encodes aligned photos at this quality, so they match the shards' pixels
                    "jpeg_quality": args.get("quality")})

    @classmethod
    def unnamed(cls, num_classes: int) -> "DatasetInfo":
        return cls(tuple(str(i) for i in range(num_classes)))


def model_meta(cfg: Config, data: DatasetInfo, table: NoiseTable, best: dict) -> dict:
    """model.pt's metadata for the selection record ``best``: what serve needs to rebuild and feed the model."""
    return {
        "classes": list(data.classes), "dataset": data.dataset, "num_classes": len(data.classes),
        "image_size": cfg.data.image_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
        "channel_order": "RGB", "eval_crop_fraction": cfg.data.eval_crop_fraction,
        "alignment": dict(data.alignment),
        "architecture": {"name": cfg.model.name, "small_stem": resolve_small_stem(cfg.model.small_stem,
                                                                                  cfg.data.image_size)},
        "branch": best["branch"], "epoch": best["epoch"], "method": cfg.method.name,
        "noise": {"kind": table.kind, "rate": table.rate, "seed": table.seed},
        "config_sha256": config_digest(to_dict(cfg)), "config": to_dict(cfg),
        "selection": best,
    }


class ModelSelection:
    """The best epoch so far on validation. Ranks other than 0 use this class as it is: they keep the
    record from the epochs they trained and write nothing."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best: dict | None = None

    def resume(self, start_epoch: int) -> None:
        """Continue a run at ``start_epoch`` (only the rank that writes model.pt needs its best so far)."""

    def consider(self, epoch: int, val: dict, test: dict | None, learner) -> dict:
        """Take the epoch's reports (branch -> report) into account -> the best so far (this epoch when it
        beats the previous best); ``learner`` (a SoftLearner) holds the epoch's branches."""
        chosen = choose_branch(val, self.metric)
        score = val[chosen][self.metric]
        if self.best is None or score > self.best["score"]:
            self.best = {"epoch": epoch, "branch": chosen, "score": score, "metric": self.metric,
                         "val": val[chosen], "test": test[chosen] if test else None}
            self._new_best(learner)
        return self.best

    def _new_best(self, learner) -> None:
        pass


class ModelWriter(ModelSelection):
    """Rank 0's selection: writes the best epoch's branch (weights without the head) and metadata to
    RUN/model.pt whenever the best changes; the run's best so far is whatever model.pt holds."""

    def __init__(self, cfg: Config, store: RunStore, table: NoiseTable, data: DatasetInfo):
        super().__init__(cfg.train.select_metric)
        self.cfg, self.store, self.table, self.data = cfg, store, table, data

    def resume(self, start_epoch: int) -> None:
        if start_epoch > 0 and self.store.exists(MODEL_FILE):
            self.best = load_model(self.store.path(MODEL_FILE)).meta["selection"]

    def _new_best(self, learner) -> None:
        module = learner.branches()[self.best["branch"]]
        save_model(self.store, branch_weights(module), model_meta(self.cfg, self.data, self.table, self.best))
