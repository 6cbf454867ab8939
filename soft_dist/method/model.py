"""The classifier: a torchvision ResNet backbone, a linear classifier and (student only) the
uncertainty head alpha = sigmoid(Linear(features)) of paper Eq. 7.

Parameter names are stable and meaningful, because the EMA teacher pairs parameters BY NAME:
``backbone.*``, ``classifier.*`` on both networks, ``uncertainty.*`` on the student only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SMALL_INPUT_MAX = 64  # images at or below this size get the small stem by default


class ExpressionNet(nn.Module):
    """Backbone -> pooled features [B, D] -> logits [B, C]; optional uncertainty alpha [B, 1]."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, uncertainty: bool):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.uncertainty = nn.Linear(feature_dim, 1) if uncertainty else None

    def forward(self, images: torch.Tensor, with_alpha: bool = False):
        """images [B, 3, H, W] -> logits [B, C], or (logits, alpha [B, 1]) when ``with_alpha``."""
        features = self.backbone(images)
        logits = self.classifier(features)
        if not with_alpha:
            return logits
        if self.uncertainty is None:
            raise RuntimeError("this network has no uncertainty head (teachers never do)")
        return logits, torch.sigmoid(self.uncertainty(features))

    def without_head(self) -> "ExpressionNet":
        """A deep copy without the uncertainty head: the teacher's architecture."""
        head = self.uncertainty
        self.uncertainty = None
        try:
            twin = copy.deepcopy(self)
        finally:
            self.uncertainty = head
        return twin


TORCHVISION_WIDTH = 64  # channels of a torchvision ResNet's first stage; its weights only fit this width


def build_backbone(name: str, small_stem: bool, width: int) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its fc layer -> (module giving [B, D] features, D).

    ``small_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv, for inputs of 64 px or less.
    ``width`` is the first stage's channel count (doubled at each later stage); at 64 the network is
    torchvision's own, built the same way (same random draws) as before the option existed."""
    import torchvision

    factory = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
               "resnet50": torchvision.models.resnet50}[name]
    net = factory(weights=None)
    if width != TORCHVISION_WIDTH:
        _narrow(net, width)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_stem:
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net, feature_dim


def _narrow(net: nn.Module, width: int) -> None:
    """Rebuild a torchvision ResNet's stem and four stages with ``width`` first-stage channels, in place.

    Uses the network's own layer builder, so the blocks (BasicBlock or Bottleneck) and their counts stay
    those of the named architecture; the new layers get torchvision's initialisation."""
    block = type(net.layer1[0])
    depths = [len(net.layer1), len(net.layer2), len(net.layer3), len(net.layer4)]
    net.inplanes, net.dilation = width, 1  # the state _make_layer reads and advances
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, depths[0])
    net.layer2 = net._make_layer(block, width * 2, depths[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, depths[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, depths[3], stride=2)
    net.fc = nn.Linear(width * 8 * block.expansion, net.fc.out_features)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@dataclass
class WeightReport:
    """What a weight file did to the backbone."""

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)  # backbone keys not in the file (fatal)
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone has no use for (reported)


class WeightLoadError(RuntimeError):
    pass


def _unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightLoadError("expected a state_dict (name -> tensor) or {'state_dict': ...}")
    out = {}
    for key, value in obj.items():
        while key.startswith("module."):  # saved from DataParallel / DDP
            key = key[len("module."):]
        if key.startswith("backbone."):  # saved from an ExpressionNet
            key = key[len("backbone."):]
        out[key] = value
    return out


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> WeightReport:
    """Load a local weight file into ``backbone`` strictly; missing backbone keys are an error.

    Accepts a plain state_dict or {'state_dict': ...}; 'module.' and 'backbone.' prefixes are stripped.
    Keys the backbone does not have (e.g. another task's 'fc.*') are listed as unexpected, not loaded.
    Loaded with weights_only=True, so a file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"weight file not found: {path}")
    state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing:
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise WeightLoadError(f"{path}: {len(missing)} backbone keys missing from the file: {shown}")
    bad_shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad_shapes:
        raise WeightLoadError(f"{path}: shape mismatch (file vs model): {'; '.join(bad_shapes)}")
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    return WeightReport(source=str(path), loaded=len(own), unexpected=unexpected)


def load_imagenet_weights(backbone: nn.Module, name: str) -> WeightReport:
    """torchvision's ImageNet weights by name (downloads: needs network access)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    state = weights.get_state_dict(progress=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    backbone.load_state_dict(state, strict=True)
    return WeightReport(source=f"torchvision:{weights}", loaded=len(state))


def resolve_small_stem(small_stem: bool | None, image_size: int) -> bool:
    """model.small_stem as built: None means on for inputs of at most SMALL_INPUT_MAX pixels."""
    return image_size <= SMALL_INPUT_MAX if small_stem is None else bool(small_stem)


def build_student(
    name: str,
    num_classes: int,
    image_size: int,
    small_stem: bool | None,
    pretrained: str | None,
    *,
    width: int,
    uncertainty: bool = True,
) -> tuple[ExpressionNet, WeightReport | None]:
    """The student network (with the uncertainty head unless ``uncertainty`` is False) and the weight
    report (None without pretraining). ``small_stem``, ``pretrained`` and ``width`` as model.small_stem,
    model.pretrained and model.width mean them."""
    small_stem = resolve_small_stem(small_stem, image_size)
    backbone, dim = build_backbone(name, small_stem, width)
    report = None
    if pretrained == "imagenet":
        if small_stem:
            raise WeightLoadError("ImageNet weights need the standard stem: set model.small_stem=false")
        if width != TORCHVISION_WIDTH:
            raise WeightLoadError(f"ImageNet weights need model.width={TORCHVISION_WIDTH} (got {width})")
        report = load_imagenet_weights(backbone, name)
    elif pretrained:
        report = load_backbone_weights(backbone, pretrained)
    return ExpressionNet(backbone, dim, num_classes, uncertainty=uncertainty), report
