"""model.pt back into a network: the chosen branch as an ExpressionNet in eval mode, and the same
network with the input normalisation inside it (what the exported files hold)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from soft_dist.method.model import TORCHVISION_WIDTH, ExpressionNet, build_student
from soft_dist.train.errors import CheckpointError
from soft_dist.train.model_file import ModelFile, parse_model, read_model_bytes

# What a consumer of model.pt needs from its metadata; checked up front so that a file written by an older
# or foreign tool fails with the missing field named, not with a KeyError deep inside.
REQUIRED_META = ("classes", "image_size", "mean", "std", "channel_order", "eval_crop_fraction", "architecture",
                 "branch", "epoch")


@dataclass(frozen=True)
class LoadedModel:
    """A model.pt read from ``where`` (its name in messages), with the sha256 of its bytes."""

    file: ModelFile
    where: str
    sha256: str

    @property
    def meta(self) -> dict:
        return self.file.meta

    @property
    def classes(self) -> list[str]:
        return list(self.file.meta["classes"])


def read_model(location: str | Path) -> LoadedModel:
    """model.pt (a file, or a run directory holding one; local or s3://) with its metadata checked.
    CheckpointError naming the file when it is missing, not a soft-dist model, or lacks a field."""
    data, where = read_model_bytes(location)
    model = LoadedModel(parse_model(data, where), where, hashlib.sha256(data).hexdigest())
    missing = [k for k in REQUIRED_META if k not in model.meta]
    if missing:
        raise CheckpointError(f"{where}: model metadata lacks {', '.join(missing)}")
    return model


def build_network(model: LoadedModel) -> ExpressionNet:
    """The chosen branch as saved: logits [B, C] from normalised images [B, 3, S, S]; eval mode, CPU.

    model.pt holds the branch without the uncertainty head, so the network is built without one."""
    meta = model.meta
    arch = meta["architecture"]
    net, _ = build_student(arch["name"], len(meta["classes"]), int(meta["image_size"]), arch.get("small_stem"),
                           pretrained=None, width=int(arch.get("width", TORCHVISION_WIDTH)), uncertainty=False)
    try:
        net.load_state_dict(model.file.state_dict, strict=True)
    except RuntimeError as err:  # missing / unexpected keys or shapes: the metadata and weights disagree
        raise CheckpointError(f"{model.where}: weights do not fit a {arch['name']} with "
                              f"{len(meta['classes'])} classes ({err})") from err
    return net.eval()


class NormalisedNet(nn.Module):
    """RGB images in [0, 1], [B, 3, S, S] float32 -> logits [B, C]: (x - mean) / std, then the network.

    Exported files hold this module, so that a consumer only resizes, crops and scales to [0, 1]; the
    mean and std live in the graph as constants and cannot be applied twice or forgotten."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def inference_network(model: LoadedModel) -> NormalisedNet:
    """The exportable network of ``model``: raw [0, 1] RGB in, logits out; eval mode, CPU."""
    return NormalisedNet(build_network(model), model.meta["mean"], model.meta["std"]).eval()
