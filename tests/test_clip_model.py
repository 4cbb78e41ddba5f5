"""CLIP backbone, classifier and zero-shot heads on a tiny random-init open_clip model."""
from __future__ import annotations

import open_clip
import pytest
import torch

from negkit import io as nkio
from negkit.clip import heads, model as cm


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return cm.load_clip(cm.TINY_MODEL, None, device="cpu")


def test_tiny_backbone_preprocess_keeps_raw_pixels(backbone):
    assert backbone.name == f"{cm.TINY_MODEL}/random"
    assert backbone.image_size == 32
    assert not any(isinstance(t, open_clip.transform.Normalize) for t in backbone.preprocess.transforms)
    from PIL import Image
    x = backbone.preprocess(Image.new("RGB", (40, 50), (255, 0, 0)))
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x[0], torch.ones(32, 32))


def test_head_equals_open_clip_builder(backbone):
    names, templates = heads.classnames_and_templates("eurosat")
    head = heads.build_head(backbone, names, templates, device="cpu")
    ref = open_clip.build_zero_shot_classifier(backbone.model, backbone.tokenizer, list(names), list(templates),
                                               device="cpu")
    scale = backbone.model.logit_scale.exp().item()
    assert head.weight.shape == (10, 32)
    torch.testing.assert_close(head.weight, scale * ref.T)
    assert not head.weight.requires_grad


def test_classifier_is_normalize_visual_l2_head(backbone):
    names, templates = heads.classnames_and_templates("mnist")
    head = heads.build_head(backbone, names, templates, device="cpu")
    clf = cm.ImageClassifier.from_backbone(backbone, head)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        z = backbone.model.encode_image((x - mean) / std, normalize=True)
        torch.testing.assert_close(clf(x), z @ head.weight.T)
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("visual.") for n in trainable)


def test_head_cache_roundtrip_and_key(backbone, tmp_path):
    h1 = heads.get_head(backbone, "mnist", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.startswith(f"{cm.TINY_MODEL}__random__mnist__")
    # Corrupt the cached weights: a cache hit must read them back instead of rebuilding.
    nkio.save_state_dict({"weight": torch.zeros_like(h1.weight)}, files[0])
    assert torch.count_nonzero(heads.get_head(backbone, "mnist", cache_dir=tmp_path).weight) == 0
    other = heads.get_head(backbone, "mnist", cache_dir=tmp_path, templates=["a digit {}."])
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and torch.count_nonzero(other.weight) > 0


def test_imagenet_defaults_come_from_open_clip():
    names, templates = heads.classnames_and_templates("imagenet")
    assert len(names) == 1000 and len(templates) == 80 and templates[0] == "a bad photo of a {}."


def test_missing_classnames_or_templates_are_named():
    with pytest.raises(ValueError, match="no class names for dataset 'cars'.*bundle.classnames"):
        heads.classnames_and_templates("cars")
    with pytest.raises(ValueError, match="no prompt templates for dataset 'mystery'"):
        heads.classnames_and_templates("mystery", classnames=["a", "b"])
    with pytest.raises(ValueError, match="placeholder"):
        heads.classnames_and_templates("mnist", templates=["a photo"])


def test_unknown_model_or_tag_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'.*ViT-B-32"):
        cm.load_clip("ViT-Q-99", None)
    with pytest.raises(ValueError, match="unknown pretrained tag 'nope' for 'ViT-B-32'.*openai"):
        cm.load_clip("ViT-B-32", "nope")


def test_local_checkpoint_full_and_visual_only(backbone, tmp_path):
    full = tmp_path / "full.safetensors"
    nkio.save_state_dict(backbone.model.state_dict(), full)
    b2 = cm.load_clip(cm.TINY_MODEL, None, checkpoint=full, device="cpu")
    assert b2.pretrained == "full"
    for k, v in backbone.model.state_dict().items():
        torch.testing.assert_close(b2.model.state_dict()[k], v)
    vis = tmp_path / "vis.safetensors"
    nkio.save_state_dict(backbone.model.visual.state_dict(), vis)  # keys without 'visual.'
    b3 = cm.load_clip(cm.TINY_MODEL, None, checkpoint=vis, device="cpu")
    torch.testing.assert_close(b3.model.visual.conv1.weight, backbone.model.visual.conv1.weight)
    # heads of different checkpoint files never share a cache entry, even under the same file name
    other = tmp_path / "elsewhere" / "full.safetensors"
    other.parent.mkdir()
    nkio.save_state_dict(backbone.model.state_dict(), other)
    b4 = cm.load_clip(cm.TINY_MODEL, None, checkpoint=other, device="cpu")
    assert b4.pretrained == b2.pretrained == "full" and b4.weights_id != b2.weights_id
    assert heads.head_key(b4, "mnist", ["0"], ["{}"]) != heads.head_key(b2, "mnist", ["0"], ["{}"])


def test_checkpoint_not_fitting_names_first_bad_key(backbone, tmp_path):
    sd = backbone.model.visual.state_dict()
    bad = dict(sd)
    bad["conv1.weight"] = torch.zeros(1, 2, 3)
    path = tmp_path / "bad.safetensors"
    nkio.save_state_dict(bad, path)
    with pytest.raises(ValueError, match=r"'visual.conv1.weight' has shape \(1, 2, 3\)"):
        cm.load_clip(cm.TINY_MODEL, None, checkpoint=path, device="cpu")
    missing = {k: v for k, v in sd.items() if k != "class_embedding"}
    nkio.save_state_dict(missing, path)
    with pytest.raises(ValueError, match="key 'visual.class_embedding' is missing"):
        cm.load_clip(cm.TINY_MODEL, None, checkpoint=path, device="cpu")


def test_attention_projections_of_vit_b32_are_the_reference_frozen_part():
    visual = open_clip.create_model("ViT-B-32", pretrained=None).visual  # random init, no download
    names = cm.attention_parameter_names(visual)
    params = dict(visual.named_parameters())
    assert len(names) == 12 * 4 and set(names) <= set(params)
    frozen = sum(params[n].numel() for n in names)
    # 12 layers × (3·768² + 3·768 + 768² + 768) = 28,348,416 of the encoder's 87,849,216 parameters
    assert frozen == 12 * (4 * 768 * 768 + 4 * 768) == 28_348_416
    assert sum(p.numel() for p in params.values()) == 87_849_216
