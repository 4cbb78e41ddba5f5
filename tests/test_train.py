"""The training loop: learning, determinism, resume, masks, trainable subsets, hooks."""
from __future__ import annotations

import math
import random

import numpy as np

import pytest
import torch
from torch import nn

import negkit.data as data
import negkit.models as models
from negkit.config import from_dict
from negkit.data import TensorImageDataset
from negkit.evaluate import evaluate
from negkit.checkpoint import CHECKPOINT, read_training_state
from negkit.train import TrainConfig, lr_factor, train

FAST = dict(epochs=3, batch_size=16, lr=0.05, amp=False)


def _toy(n: int = 64, seed: int = 0) -> TensorImageDataset:
    """Two classes told apart by mean brightness (1x4x4 images)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 1, 4, 4, generator=g) * 0.5 + 0.5 * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    return TensorImageDataset(images, labels)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.get("small_resnet", 2, in_channels=1, widths=(4, 8))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_on_digits_learns():
    b = data.get("digits")
    torch.manual_seed(0)
    model = models.get("small_resnet", b.num_classes, in_channels=1, mean=b.mean, std=b.std, widths=(8, 16))
    before = evaluate(model, b.test)["acc"]
    res = train(model, b.train, dict(epochs=4, batch_size=64, lr=0.05), progress=False,
                eval_fn=lambda m: {"val_acc": evaluate(m, b.val)["acc"]})
    assert before < 30 and evaluate(model, b.test)["acc"] > 85
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4] and "val_acc" in res.history[-1]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.metrics["steps"] == 4 * math.ceil(len(b.train) / 64) and res.metrics["train_acc"] > 80


def test_training_is_deterministic_per_seed():
    def jittered():  # a transform drawing from python's and numpy's global RNGs (like RandAugment)
        ds = _toy()
        ds.transform = lambda x: x * (0.9 + 0.1 * random.random()) + 0.01 * float(np.random.rand())
        return ds

    runs = [train(_net(), jittered(), FAST, progress=False).model for _ in range(2)]
    assert _same(_weights(runs[0]), _weights(runs[1]))
    other = train(_net(), _toy(), {**FAST, "seed": 1}, progress=False).model
    assert not _same(_weights(runs[0]), _weights(other))


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_interrupted_run_resumes_to_bitwise_identical_weights(tmp_path, optimizer):
    cfg = {**FAST, "optimizer": optimizer, "lr": 0.01, "warmup_steps": 2}

    def noisy_ce(model, images, labels, frac):  # uses the global RNG, which resume must restore
        return nn.functional.cross_entropy(model(images + 0.05 * torch.randn_like(images)), labels)

    reference = train(_net(), _toy(), cfg, loss_fn=noisy_ce, progress=False).model

    calls = []

    def crash_in_epoch_2(model):
        calls.append(1)
        if len(calls) == 2:  # epoch 1 is checkpointed; epoch 2 dies before its checkpoint
            raise _Interrupt
        return {"n_eval": float(len(calls))}

    with pytest.raises(_Interrupt):
        train(_net(), _toy(), cfg, out_dir=tmp_path, progress=False, eval_fn=crash_in_epoch_2, loss_fn=noisy_ce)
    ckpt = tmp_path / CHECKPOINT  # its format is tested in test_checkpoint.py
    assert read_training_state(ckpt).epoch == 1 and not (tmp_path / "done.json").exists()

    untouched = _net(seed=5)
    with pytest.raises(ValueError, match="different TrainConfig.*epochs"):
        train(untouched, _toy(), {**cfg, "epochs": 4}, out_dir=tmp_path, progress=False)
    assert _same(_weights(untouched), _weights(_net(seed=5)))

    torch.manual_seed(123)  # perturb the global RNG: resume must restore it from the checkpoint
    resumed = train(_net(seed=7), _toy(), cfg, out_dir=tmp_path, progress=False, loss_fn=noisy_ce)
    assert _same(_weights(resumed.model), _weights(reference))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and resumed.history[0]["n_eval"] == 1.0
    for name in ("model.safetensors", "config.json", "metrics.json", "done.json"):
        assert (tmp_path / name).exists()
    assert not ckpt.exists()

    # A finished run is loaded, not retrained: the loss function would fail if it were called.
    def never(*args):
        raise AssertionError("a finished run must not train again")

    again = train(_net(seed=9), _toy(), cfg, out_dir=tmp_path, progress=False, loss_fn=never)
    assert _same(_weights(again.model), _weights(reference)) and again.metrics == resumed.metrics
    with pytest.raises(ValueError, match="different TrainConfig.*lr"):
        train(_net(), _toy(), {**cfg, "lr": 0.5}, out_dir=tmp_path, progress=False)


def test_param_mask_keeps_unmasked_elements_bitwise():
    model = _net()
    before = _weights(model)
    w = "layers.0.conv1.weight"
    mask = torch.zeros_like(model.get_parameter(w), dtype=torch.bool)
    mask[0] = True
    train(model, _toy(), {**FAST, "weight_decay": 0.1, "momentum": 0.9}, param_mask={w: mask},
          progress=False)
    after = model.get_parameter(w).detach()
    assert torch.equal(after[~mask], before[w][~mask])
    assert not torch.equal(after[mask], before[w][mask])
    assert not torch.equal(model.fc.weight.detach(), before["fc.weight"])  # absent from the mask: trains
    with pytest.raises(ValueError, match="bool tensor of shape"):
        train(_net(), _toy(), FAST, param_mask={w: mask.float()}, progress=False)
    with pytest.raises(ValueError, match="not a trained parameter"):
        train(_net(), _toy(), FAST, param_mask={"nope": mask}, progress=False)


def test_trainable_freezes_everything_else_and_restores_requires_grad():
    model = _net()
    before = _weights(model)
    train(model, _toy(), FAST, trainable=lambda n: n.startswith("fc."), progress=False)
    after = _weights(model)
    changed = {k for k in before if k in dict(model.named_parameters()) and not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="not parameters of the model"):
        train(_net(), _toy(), FAST, trainable=["fc.weight", "head.w"], progress=False)


def test_custom_loss_receives_training_progress_and_can_ascend():
    fracs = []

    def negated_ce(model, images, labels, progress_frac):
        fracs.append(progress_frac)
        return -nn.functional.cross_entropy(model(images), labels)

    model = _net()
    res = train(model, _toy(), {**FAST, "lr": 0.01}, loss_fn=negated_ce, progress=False)
    assert fracs[0] == 0.0 and all(0 <= f < 1 for f in fracs) and fracs == sorted(fracs)
    assert len(fracs) == 3 * 4 and "train_acc" not in res.metrics  # no logits returned
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]  # ascent on CE


def test_grad_accumulation_matches_a_larger_batch_without_batchnorm():
    def linear():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    cfg = {**FAST, "schedule": "constant", "momentum": 0.0, "weight_decay": 0.0}
    big = train(linear(), _toy(), {**cfg, "batch_size": 32}, progress=False).model
    acc = train(linear(), _toy(), {**cfg, "batch_size": 16, "grad_accum": 2}, progress=False)
    assert acc.metrics["steps"] == 3 * 2
    for a, b in zip(big.parameters(), acc.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_non_finite_loss_stops_with_advice():
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(_net(), _toy(), FAST, loss_fn=lambda m, x, y, f: m(x).sum() * float("nan"), progress=False)


def test_config_validation_and_schedule():
    with pytest.raises(ValueError, match="unknown TrainConfig key.*'epoch'"):
        from_dict(TrainConfig, {"epoch": 3})
    with pytest.raises(ValueError, match="valid optimizers"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    assert lr_factor(0, 10, "cosine", warmup_steps=2) == 0.5 and lr_factor(1, 10, "cosine", 2) == 1.0
    assert lr_factor(2, 10, "cosine", 2) == 1.0 and lr_factor(6, 10, "cosine", 2) == pytest.approx(0.5)
    assert lr_factor(10, 10, "cosine") == pytest.approx(0.0) and lr_factor(7, 10, "constant") == 1.0


def test_defaults_are_the_references_fp32_and_kept_last_batch():
    cfg = TrainConfig()
    assert (cfg.amp, cfg.drop_last) == (False, False)


def test_multistep_schedule_matches_torchs_multisteplr_stepped_per_epoch():
    """SalUn's CIFAR-10 recipe: MultiStepLR(milestones, gamma=0.1), scheduler.step() after every epoch."""
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.1, schedule="multistep", milestones=(2, 4), gamma=0.1)
    res = train(_net(), _toy(40), cfg, progress=False)  # 3 batches per epoch, the last of 8 images
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [h["lr"] for h in res.history] == pytest.approx(expected)  # [0.1, 0.1, 0.01, 0.01, 0.001]


def test_a_last_batch_of_one_image_is_kept_and_trains_through_batchnorm2d():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    res = train(model, _toy(33), dict(FAST, epochs=1), progress=False)  # batches of 16, 16 and 1
    assert res.metrics["steps"] == 3 and math.isfinite(res.metrics["train_loss"])
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert train(_net(), _toy(33), dict(FAST, epochs=1, drop_last=True), progress=False).metrics["steps"] == 2


def test_a_one_image_batch_through_batchnorm1d_says_to_drop_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="holds one image .*pass drop_last=True"):
        train(model, _toy(33), dict(FAST, epochs=1), progress=False)
    assert train(model, _toy(33), dict(FAST, epochs=1, drop_last=True), progress=False).metrics["steps"] == 2
