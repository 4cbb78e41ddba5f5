"""Model registry, the Normalize layer and the built-in ResNets."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import negkit.models as models
from negkit.models import Normalize


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"small_resnet", "resnet18"} <= set(models.list_models())
    with pytest.raises(ValueError, match="registered models are .*small_resnet"):
        models.get("resnet19", num_classes=10)


def test_normalize_applies_per_channel_statistics_and_is_saved_with_the_model():
    norm = Normalize((0.5, 0.0), (0.25, 2.0))
    x = torch.tensor([1.0, 4.0]).view(1, 2, 1, 1)
    assert norm(x).flatten().tolist() == [2.0, 2.0]
    assert set(norm.state_dict()) == {"mean", "std"}
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.0,), (0.0,))
    with pytest.raises(ValueError, match="channels"):
        Normalize((0.0, 0.0), (1.0,))


@pytest.mark.parametrize("name, in_channels, size", [("small_resnet", 1, 8), ("small_resnet", 3, 16),
                                                     ("resnet18", 3, 32)])
def test_models_map_raw_pixels_to_logits_and_start_with_normalize(name, in_channels, size):
    torch.manual_seed(0)
    mean, std = (0.3,) * in_channels, (0.2,) * in_channels
    model = models.get(name, num_classes=7, in_channels=in_channels, mean=mean, std=std)
    assert isinstance(model.normalize, Normalize)
    assert model.normalize.mean.flatten().tolist() == pytest.approx(list(mean))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.eval()
    out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_model_output_depends_on_normalisation():
    torch.manual_seed(0)
    a = models.get("small_resnet", 3, in_channels=1).eval()
    b = models.get("small_resnet", 3, in_channels=1, mean=(0.5,), std=(0.1,)).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("normalize")}, strict=False)
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(a(x), b(x))
    assert torch.allclose(b(x), a((x - 0.5) / 0.1), atol=1e-5)


def test_resnet18_uses_the_cifar_stem_and_small_resnet_is_small():
    r18 = models.get("resnet18", 10)
    assert r18.backbone.conv1.kernel_size == (3, 3) and r18.backbone.conv1.stride == (1, 1)
    assert isinstance(r18.backbone.maxpool, nn.Identity)
    small = models.get("small_resnet", 10, in_channels=1)
    assert sum(p.numel() for p in small.parameters()) < 200_000
    with pytest.raises(ValueError, match="in_channels"):
        models.get("small_resnet", 10, in_channels=1, mean=(0.1, 0.1, 0.1), std=(1.0, 1.0, 1.0))


def _bundle(channels: int, classes: int = 3):
    from negkit import data

    images, labels = torch.rand(6, channels, 8, 8), torch.arange(6) % classes
    part = data.TensorImageDataset(images, labels)
    return data.DatasetBundle("tiny", part, part, part, classnames=tuple("abc")[:classes],
                              mean=(0.4,) * channels, std=(0.2,) * channels)


@pytest.mark.parametrize("channels", [1, 3])
def test_get_sizes_the_model_from_the_dataset(channels):
    bundle = _bundle(channels)
    model = models.get("small_resnet", dataset=bundle, widths=(4, 8)).eval()
    assert model.stem[0].in_channels == channels
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.4] * channels)
    assert model(bundle.train[0][0][None]).shape == (1, 3)


def test_get_refuses_values_that_contradict_the_dataset():
    bundle = _bundle(1)
    with pytest.raises(ValueError, match=r"in_channels=3 contradicts dataset 'tiny' \(in_channels 1\)"):
        models.get("small_resnet", dataset=bundle, in_channels=3)
    with pytest.raises(ValueError, match="num_classes=10 contradicts"):
        models.get("small_resnet", 10, dataset=bundle)
    with pytest.raises(ValueError, match="needs num_classes"):
        models.get("small_resnet")


def test_get_passes_only_what_a_builder_takes():
    @models.register_model("_test_linear_no_channels")
    def linear(num_classes):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert models.get("_test_linear_no_channels", dataset=_bundle(1))[1].out_features == 3
    finally:
        models._REGISTRY.pop("_test_linear_no_channels")
