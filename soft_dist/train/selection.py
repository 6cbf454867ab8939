"""Choosing model.pt: its epoch by ``train.model_epoch``, its branch on validation, and its metadata.

After every epoch the run loop hands the validation (and test) reports to a :class:`ModelSelection`.
Under the rule ``best`` the epoch becomes model.pt's when it beats the best so far on
``train.select_metric`` (protocol val_selected); under ``last`` every epoch does, so model.pt ends as the
last epoch (protocol last). Either way the branch is the one validation chooses at that epoch (see
soft_dist.train.protocols.choose_branch). ``auto`` is ``last`` for methods with an EMA teacher and
``best`` without: measured on three noisy datasets, choosing among a teacher's epochs on a small noisy
validation split lost more to noise than it gained, while plain CE needs the early stop
(docs/experiments.md, "Which epoch model.pt holds"). Every rank keeps the record (it goes into the epoch's
metrics line and results.json); rank 0 holds a :class:`ModelWriter`, which also writes that epoch's
branch to RUN/model.pt and, on resume, takes the record so far from the model.pt it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from soft_dist.config import Config, to_dict
from soft_dist.method.model import resolve_small_stem
from soft_dist.noise.table import NoiseTable
from soft_dist.run_files import MODEL_FILE
from soft_dist.storage import RunStore
from soft_dist.train.model_file import branch_weights, config_digest, load_model, save_model
from soft_dist.train.protocols import choose_branch


# train.model_epoch's rules and the protocol (soft_dist.train.protocols) each one follows
PROTOCOL_OF_RULE = {"best": "val_selected", "last": "last"}


def model_epoch_rule(cfg: Config) -> str:
    """train.model_epoch as it runs: "best" or "last" (auto: last with an EMA teacher, best without)."""
    if cfg.train.model_epoch != "auto":
        return cfg.train.model_epoch
    return "last" if cfg.preset.teacher else "best"


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
        "architecture": {"name": cfg.model.name, "width": cfg.model.width,
                         "small_stem": resolve_small_stem(cfg.model.small_stem, cfg.data.image_size)},
        "branch": best["branch"], "epoch": best["epoch"], "method": cfg.method.name,
        "noise": {"kind": table.kind, "rate": table.rate, "seed": table.seed},
        "config_sha256": config_digest(to_dict(cfg)), "config": to_dict(cfg),
        "selection": best,
    }


class ModelSelection:
    """model.pt's epoch so far (the best on validation under the rule "best", the newest under "last"),
    kept in the resumable state (:meth:`state`). Ranks other than 0 use this class as it is: they keep the
    record and write nothing."""

    def __init__(self, metric: str, rule: str):
        if rule not in PROTOCOL_OF_RULE:
            raise ValueError(f"model epoch rule must be one of {list(PROTOCOL_OF_RULE)}, got {rule!r}")
        self.metric, self.rule = metric, rule
        self.best: dict | None = None

    def state(self) -> dict | None:
        """What a checkpoint keeps: the best record so far."""
        return self.best

    def resume(self, best: dict | None, epochs_done: int, learner) -> None:
        """Continue a run after ``epochs_done`` epochs with the checkpoint's best record ``best`` (None: a
        new run, or a checkpoint written before the record was kept); ``learner`` holds the restored state."""
        self.best = best

    def commit(self) -> None:
        """The epoch's checkpoint is committed: what depends on it may be written now."""

    def consider(self, epoch: int, val: dict, test: dict | None, learner) -> dict:
        """Take the epoch's reports (branch -> report) into account -> model.pt's record so far (this epoch
        under "last", or when it beats the previous best under "best"); ``learner`` (a SoftLearner) holds
        the epoch's branches."""
        chosen = choose_branch(val, self.metric)
        score = val[chosen][self.metric]
        if self.rule == "last" or self.best is None or score > self.best["score"]:
            self.best = {"epoch": epoch, "branch": chosen, "score": score, "metric": self.metric,
                         "rule": self.rule, "protocol": PROTOCOL_OF_RULE[self.rule],
                         "val": val[chosen], "test": test[chosen] if test else None}
            self._new_best(learner)
        return self.best

    def _new_best(self, learner) -> None:
        pass


class ModelWriter(ModelSelection):
    """Rank 0's selection: writes the selected epoch's branch (weights without the head) and metadata to
    RUN/model.pt whenever the selection changes, but only once that epoch's checkpoint is committed
    (:meth:`commit`). So after a crash at any point model.pt holds an epoch the resumed history keeps:
    either the best of the committed epochs, or (crash between the checkpoint and model.pt) the epoch
    just restored, which :meth:`resume` writes again."""

    def __init__(self, cfg: Config, store: RunStore, table: NoiseTable, data: DatasetInfo):
        super().__init__(cfg.train.select_metric, model_epoch_rule(cfg))
        self.cfg, self.store, self.table, self.data = cfg, store, table, data
        self.pending: tuple[dict, dict] | None = None  # (weights, meta) of a new best not yet written

    def resume(self, best: dict | None, epochs_done: int, learner) -> None:
        on_disk = load_model(self.store.path(MODEL_FILE)).meta["selection"] if (
            epochs_done > 0 and self.store.exists(MODEL_FILE)) else None
        # A checkpoint from before the record was kept: the best so far is whatever model.pt holds.
        self.best = best if best is not None else on_disk
        if best is not None and best["epoch"] == epochs_done and on_disk != best:
            # The run stopped after the best epoch's checkpoint and before its model.pt: the restored
            # learner is that epoch's state, so write it now.
            self._new_best(learner)
            self.commit()

    def _new_best(self, learner) -> None:
        module = learner.branches()[self.best["branch"]]
        self.pending = (branch_weights(module), model_meta(self.cfg, self.data, self.table, self.best))

    def commit(self) -> None:
        if self.pending is not None:
            save_model(self.store, *self.pending)
            self.pending = None
