"""Backbone, small stem, uncertainty head, and strict weight loading from local files."""

import pytest
import torch

from soft_dist.method.model import WeightLoadError, build_backbone, build_student, load_backbone_weights


def test_shapes_and_stems():
    # small_stem None: the small stem is chosen automatically at 32 px
    net, _ = build_student("resnet18", 7, image_size=32, small_stem=None, pretrained=None)
    assert isinstance(net.backbone.maxpool, torch.nn.Identity) and net.backbone.conv1.kernel_size == (3, 3)
    logits, alpha = net(torch.randn(2, 3, 32, 32), with_alpha=True)
    assert logits.shape == (2, 7) and alpha.shape == (2, 1) and ((alpha > 0) & (alpha < 1)).all()
    big, _ = build_student("resnet18", 7, image_size=112, small_stem=None, pretrained=None)
    assert big.backbone.conv1.kernel_size == (7, 7)
    assert big.without_head().uncertainty is None and big.uncertainty is not None


def test_state_dict_saved_by_test_loads(tmp_path):
    source, _ = build_backbone("resnet18", small_stem=False)
    with torch.no_grad():
        source.conv1.weight.fill_(0.5)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # another task's classifier: reported, not loaded
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path)
    net, report = build_student("resnet18", 7, image_size=112, small_stem=None, pretrained=str(path))
    assert torch.equal(net.backbone.conv1.weight, torch.full_like(net.backbone.conv1.weight, 0.5))
    assert report.unexpected == ["fc.weight"] and report.missing == []
    assert report.loaded == len(net.backbone.state_dict())


def test_missing_backbone_keys_fail_with_list(tmp_path):
    source, _ = build_backbone("resnet18", small_stem=False)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    target, _ = build_backbone("resnet18", small_stem=False)
    with pytest.raises(WeightLoadError, match=r"backbone keys missing.*layer4\.0\.bn1"):
        load_backbone_weights(target, path)


def test_missing_file_and_wrong_stem(tmp_path):
    with pytest.raises(WeightLoadError, match="not found"):
        build_student("resnet18", 7, 112, small_stem=None, pretrained=str(tmp_path / "nope.pt"))
    source, _ = build_backbone("resnet18", small_stem=False)
    torch.save(source.state_dict(), tmp_path / "std.pt")
    with pytest.raises(WeightLoadError, match="conv1.weight"):
        build_student("resnet18", 7, 32, small_stem=None, pretrained=str(tmp_path / "std.pt"))
