"""Linearised (tangent) fine-tuning: the Taylor expansion by hand, then a tiny open_clip pool and its negation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import negkit.data
from negkit import io as nkio
from negkit.clip import finetune as cf
from negkit.clip import model as cm
from negkit.clip import negation as cn
from negkit.clip.datasets import write_digits_imagefolder
from negkit.clip.heads import get_head
from negkit.clip.linearize import LinearizedModel
from negkit.results import ResultsLog
from negkit.taskvec import TaskVector


class Square(nn.Module):
    """f(x; w, b) = w²·x + b."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w ** 2 * x + self.b


def test_first_order_taylor_expansion_by_hand():
    lin = LinearizedModel(Square(3.0, 1.0))
    x = torch.tensor([2.0])
    assert lin(x).item() == 19.0  # θ = θ₀: f_lin = f = 9·2 + 1
    with torch.no_grad():
        lin.module.w.fill_(5.0)
        lin.module.b.fill_(4.0)
    # f(θ₀) + ∂f/∂w·(w − w₀) + ∂f/∂b·(b − b₀) = 19 + (2·3·2)·2 + 1·3 = 46, where f(θ) = 25·2 + 4 = 54
    assert lin(x).item() == 46.0
    lin(x).sum().backward()
    # ∂f_lin/∂w = ∂f/∂w at θ₀ = 2·w₀·x = 12 (not 2·w·x = 20): the gradient is the one of the tangent model
    assert lin.module.w.grad.item() == 12.0 and lin.module.b.grad.item() == 1.0
    assert set(lin.state_dict()) == {"module.w", "module.b"}  # θ₀ stays out of checkpoints
    assert set(lin.module.state_dict()) == {"w", "b"}


def test_expansion_point_is_checked():
    with pytest.raises(ValueError, match=r"missing \['w'\]"):
        LinearizedModel(Square(1.0, 0.0), theta0={"b": torch.tensor(0.0)})
    with pytest.raises(ValueError, match=r"theta0\['w'\] has shape \(2,\)"):
        LinearizedModel(Square(1.0, 0.0), theta0={"w": torch.zeros(2), "b": torch.tensor(0.0)})


def test_linearised_open_clip_encoder_is_linear_in_theta():
    torch.manual_seed(0)
    backbone = cm.load_clip(cm.TINY_MODEL, None, device="cpu")
    lin = LinearizedModel(cm.ImageClassifier.from_backbone(backbone, nn.Identity()).visual).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        f0 = backbone.model.visual(x)
        torch.testing.assert_close(lin(x), f0)
        d = {n: 1e-3 * torch.randn_like(p) for n, p in lin.module.named_parameters()}
        outs = []
        for _ in range(2):
            for n, p in lin.module.named_parameters():
                p.add_(d[n])
            outs.append(lin(x) - f0)
        # exact linearity in θ − θ₀ (the non-linear encoder would give a second-order difference)
        torch.testing.assert_close(outs[1], 2 * outs[0], rtol=1e-4, atol=1e-6)
        moved = cm.ImageClassifier.from_backbone(backbone, nn.Identity()).visual
        for n, p in moved.named_parameters():
            p.add_(d[n])
        # and it is the first-order approximation of the real encoder
        err, step = (outs[0] - (moved(x) - f0)).abs().max(), outs[0].abs().max()
        assert err < 0.1 * step
    assert torch.backends.mha.get_fastpath_enabled()  # the switch is restored after each call


@pytest.fixture(scope="module")
def linear_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lin")
    write_digits_imagefolder(tmp / "data", name="mnist", size=32, per_class=8)
    write_digits_imagefolder(tmp / "data", name="imagenet", size=32, per_class=8, invert=True, test_split="val",
                             seed=1)
    torch.manual_seed(0)
    backbone = cm.load_clip(cm.TINY_MODEL, None, device="cpu")
    pool = [cf.PoolConfig(name=f"m{i}", epochs=1, lr=2e-3, batch_size=16, warmup_steps=1, fused=False, seed=i,
                          finetuning_mode="linear") for i in range(2)]
    paths = cf.finetune_pool(backbone, "mnist", pool, out_dir=tmp / "ft", data_root=tmp / "data",
                             data_kw={"source": "imagefolder"}, head_cache=tmp / "heads", device="cpu", progress=False)
    return dict(tmp=tmp, backbone=backbone, paths=paths)


def test_linear_pool_gives_ordinary_encoder_files(linear_world):
    pre = linear_world["backbone"].visual_state_dict()
    path = linear_world["paths"]["m0"]
    sd = nkio.load_state_dict(path)
    assert set(sd) == set(pre) and nkio.read_metadata(path)["finetuning_mode"] == "linear"
    tau = TaskVector.from_state_dicts(pre, sd)
    attn = set(cm.attention_parameter_names(linear_world["backbone"].model.visual))
    assert any(tau[k].any() for k in attn)  # linear mode trains attention too, as the release does
    assert any(tau[k].any() for k in tau if k not in attn)


def test_negation_acts_on_the_linearised_model(linear_world, tmp_path):
    backbone, tmp = linear_world["backbone"], linear_world["tmp"]
    head = get_head(backbone, "mnist", cache_dir=tmp / "heads", classnames=[str(i) for i in range(10)], device="cpu")
    tau = cn.visual_task_vectors(backbone.visual_state_dict(), {"m0": linear_world["paths"]["m0"]})["m0"]
    neg = cn._Negator(backbone, head, head, torch.device("cpu"), "linear")
    x = torch.rand(4, 3, 32, 32)
    feats = {}
    with torch.no_grad():
        for c in (0.0, 0.5, 1.0):
            neg.set(tau, c)
            feats[c] = neg.forget.visual(neg.forget.normalize(x))
    # f_lin(θ_pre − λτ) = f(θ_pre) − λ J τ: affine in λ
    torch.testing.assert_close(feats[0.5], (feats[0.0] + feats[1.0]) / 2, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(feats[1.0], feats[0.0])

    kw = dict(root=tmp / "data", source="imagefolder", image_size=32)
    forget, control = negkit.data.get("mnist", **kw), negkit.data.get("imagenet", **kw)
    log = ResultsLog(tmp_path / "results.jsonl")
    args = dict(methods=["negmerge"], coefs=[0.0, 1.0], head_cache=tmp / "heads", device="cpu", single=False)
    with pytest.raises(ValueError, match="fine-tuned with finetuning_mode='linear'; pass finetuning_mode='linear'"):
        cn.run_task_negation(backbone, forget, control, linear_world["paths"], log, **args)
    summary = cn.run_task_negation(backbone, forget, control, linear_world["paths"], log, finetuning_mode="linear",
                                   **args)
    df = log.read()
    assert (df.model == cn.model_label(backbone, "linear")).all() and df.model.iloc[0].endswith("+linear")
    assert list(summary.method) == ["negmerge"]
