"""Backbone, small stem, uncertainty head, and strict weight loading from local files."""

import pytest
import torch

from soft_dist.method.model import WeightLoadError, build_backbone, build_student, load_backbone_weights


def test_shapes_and_stems():
    # small_stem None: the small stem is chosen automatically at 32 px
    net, _ = build_student("resnet18", 7, image_size=32, small_stem=None, pretrained=None, width=64)
    assert isinstance(net.backbone.maxpool, torch.nn.Identity) and net.backbone.conv1.kernel_size == (3, 3)
    logits, alpha = net(torch.randn(2, 3, 32, 32), with_alpha=True)
    assert logits.shape == (2, 7) and alpha.shape == (2, 1) and ((alpha > 0) & (alpha < 1)).all()
    big, _ = build_student("resnet18", 7, image_size=112, small_stem=None, pretrained=None, width=64)
    assert big.backbone.conv1.kernel_size == (7, 7)
    assert big.without_head().uncertainty is None and big.uncertainty is not None


def test_state_dict_saved_by_test_loads(tmp_path):
    source, _ = build_backbone("resnet18", small_stem=False, width=64)
    with torch.no_grad():
        source.conv1.weight.fill_(0.5)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # another task's classifier: reported, not loaded
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path)
    net, report = build_student("resnet18", 7, image_size=112, small_stem=None, pretrained=str(path), width=64)
    assert torch.equal(net.backbone.conv1.weight, torch.full_like(net.backbone.conv1.weight, 0.5))
    assert report.unexpected == ["fc.weight"] and report.missing == []
    assert report.loaded == len(net.backbone.state_dict())


def test_missing_backbone_keys_fail_with_list(tmp_path):
    source, _ = build_backbone("resnet18", small_stem=False, width=64)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    target, _ = build_backbone("resnet18", small_stem=False, width=64)
    with pytest.raises(WeightLoadError, match=r"backbone keys missing.*layer4\.0\.bn1"):
        load_backbone_weights(target, path)


def test_missing_file_and_wrong_stem(tmp_path):
    with pytest.raises(WeightLoadError, match="not found"):
        build_student("resnet18", 7, 112, small_stem=None, pretrained=str(tmp_path / "nope.pt"), width=64)
    source, _ = build_backbone("resnet18", small_stem=False, width=64)
    torch.save(source.state_dict(), tmp_path / "std.pt")
    with pytest.raises(WeightLoadError, match="conv1.weight"):
        build_student("resnet18", 7, 32, small_stem=None, pretrained=str(tmp_path / "std.pt"), width=64)


@pytest.mark.parametrize("name, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_width_scales_every_stage_and_keeps_the_block_layout(name, expansion):
    wide, dim_wide = build_backbone(name, small_stem=True, width=64)
    narrow, dim = build_backbone(name, small_stem=True, width=16)
    assert dim_wide == 512 * expansion and dim == 128 * expansion
    assert narrow(torch.randn(2, 3, 16, 16)).shape == (2, dim)
    for stage, planes in (("layer1", 16), ("layer2", 32), ("layer3", 64), ("layer4", 128)):
        blocks = getattr(narrow, stage)
        assert len(blocks) == len(getattr(wide, stage)) and type(blocks[0]) is type(getattr(wide, stage)[0])
        assert blocks[-1].conv1.in_channels == planes * expansion
    assert narrow.conv1.out_channels == 16 and narrow.conv1.kernel_size == (3, 3)
    # the same parameter names, so the teacher pairs them and model files name them alike
    assert list(dict(narrow.named_parameters())) == list(dict(wide.named_parameters()))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(narrow) < count(wide) / 10


def test_width_64_is_torchvisions_network_drawn_alike():
    import torchvision

    torch.manual_seed(3)
    ours, _ = build_backbone("resnet18", small_stem=False, width=64)
    torch.manual_seed(3)
    theirs = torchvision.models.resnet18(weights=None)
    theirs.fc = torch.nn.Identity()
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference) and all(torch.equal(mine[k], reference[k]) for k in mine)


def test_narrow_width_refuses_imagenet_and_wide_weight_files(tmp_path):
    with pytest.raises(WeightLoadError, match="model.width=64"):
        build_student("resnet18", 7, 112, small_stem=False, pretrained="imagenet", width=32)
    source, _ = build_backbone("resnet18", small_stem=False, width=64)
    torch.save(source.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(WeightLoadError, match="shape mismatch"):
        build_student("resnet18", 7, 112, small_stem=False, pretrained=str(tmp_path / "wide.pt"), width=32)
