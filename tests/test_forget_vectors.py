"""Forget vectors: loss terms, δ placement, frozen weights, arithmetic and bad inputs.

One file for the whole ``negkit.forget_vectors`` package (its modules share the toy
model and the class-wise vectors below); sections follow the modules.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from negkit import forget_vectors as fvs
from negkit.config import from_dict
from negkit.data import TensorImageDataset
from negkit.forget_vectors import ForgetVector, ForgetVectorConfig

# Joint batches of 32 on clean views: crops and flips of 4x4 toy images would be other images.
FAST = ForgetVectorConfig(epochs=5, steps_per_epoch=8, batch_size=32, augment="none", lr=0.05)


# ----------------------------------------------------------------------------- fixtures
class RecordingNormalize(nn.Module):
    """(x - mean) / std that remembers its last input, standing in for a model's first layer."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std, self.seen = mean, std, None

    def forward(self, x):
        self.seen = x.detach().clone()
        return (x - self.mean) / self.std


def _toy_data(shape=(1, 4, 4), n_per_class=40, num_classes=3, seed=0):
    """Each class lights up its own block of pixels; noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    xs, ys = [], []
    for k in range(num_classes):
        x = 0.2 * torch.rand(n_per_class, c, h, w, generator=g)
        x.view(n_per_class, -1)[:, k * 3:(k + 1) * 3] += 0.7
        xs.append(x.clamp(0, 1))
        ys += [k] * n_per_class
    return TensorImageDataset(torch.cat(xs), ys)


def _train_toy_model(data, shape, num_classes=3, bn=True, seed=0):
    torch.manual_seed(seed)
    c, h, w = shape
    layers = [RecordingNormalize(0.3, 0.25), nn.Conv2d(c, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if bn else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * h * w, num_classes)]
    model = nn.Sequential(*layers)
    x, y = data.tensors
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _accuracy(model, data, transform=None):
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        x = transform(x) if transform is not None else x
        return float((model(x).argmax(1) == y).float().mean())


def _split(data, cls):
    y = data.targets
    return (Subset(data, torch.nonzero(y == cls).flatten().tolist()),
            Subset(data, torch.nonzero(y != cls).flatten().tolist()))


def _objective(model, forget, retain, delta, cfg):
    xf, yf = _xy(forget)
    xr, yr = _xy(retain)
    model.eval()
    with torch.no_grad():
        t = fvs.forget_vector_loss(model(xf + delta), yf, model(xr + delta), yr, delta, cfg)
    return float(t["loss"])


def _xy(subset):
    x, y = subset.dataset.tensors
    idx = torch.as_tensor(subset.indices)
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def toy():
    shape = (1, 4, 4)
    data = _toy_data(shape)
    model = _train_toy_model(data, shape)
    assert _accuracy(model, data) > 0.95  # the toy task must be learned for the tests to mean anything
    return model, data


# ----------------------------------------------------------------------------- package API
def test_package_reexports_every_public_name_of_its_modules():
    import importlib

    for mod in ("vector", "loss", "learn", "select", "arithmetic", "report"):
        sub = importlib.import_module(f"negkit.forget_vectors.{mod}")
        for name in sub.__all__:
            assert name in fvs.__all__, f"{mod}.{name} is not re-exported by negkit.forget_vectors"
            assert getattr(fvs, name) is getattr(sub, name)
    assert all(hasattr(fvs, name) for name in fvs.__all__)


# ----------------------------------------------------------------------------- loss.py
def test_margin_loss_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.5, 0.0]])
    y = torch.tensor([0, 1, 0])
    # z_y - max_{k!=y} z_k = 2, -3, -0.5 ; clamped below at -tau = -1
    assert torch.allclose(fvs.margin_loss(logits, y, tau=1.0), torch.tensor([2.0, -1.0, -0.5]))
    assert torch.allclose(fvs.margin_loss(logits, y, tau=0.0), torch.tensor([2.0, 0.0, 0.0]))


def test_objective_terms_by_hand():
    cfg = ForgetVectorConfig(alpha=2.0, beta=3.0, lam=0.5, tau=1.0)
    lf = torch.tensor([[3.0, 1.0, 0.0]])           # margin 2
    lr_ = torch.zeros(2, 3)                          # CE = log 3 each
    delta = torch.full((1, 2, 2), 0.5)               # ||δ||₂ = 1
    t = fvs.forget_vector_loss(lf, torch.tensor([0]), lr_, torch.tensor([1, 2]), delta, cfg)
    b = 3
    assert math.isclose(float(t["retain"]), 2 * math.log(3) / b, rel_tol=1e-6)
    assert math.isclose(float(t["forget"]), 2.0 / b, rel_tol=1e-6)
    assert math.isclose(float(t["norm"]), 1.0 / b, rel_tol=1e-6)
    assert math.isclose(float(t["loss"]), (2 * 2 * math.log(3) + 3 * 2.0 + 0.5 * 1.0) / b, rel_tol=1e-6)


def test_arithmetic_penalty_is_lambda_norm_of_weights_by_hand():
    # Reference: the arithmetic norm term is λ‖w‖₂, not divided by the batch size B.
    lf, lr_ = torch.tensor([[3.0, 1.0, 0.0]]), torch.zeros(2, 3)     # B = 3
    delta = torch.full((1, 2, 2), 0.5)                                 # ‖δ(w)‖₂ = 1
    w = torch.tensor([3.0, 4.0])                                       # ‖w‖₂ = 5
    args = (lf, torch.tensor([0]), lr_, torch.tensor([1, 2]), delta)
    ref = fvs.forget_vector_loss(*args, ForgetVectorConfig(lam=2.0), weights=w)
    assert math.isclose(float(ref["norm"]), 5.0, rel_tol=1e-6)
    assert math.isclose(float(ref["loss"]), 2 * math.log(3) / 3 + 5 * 2.0 / 3 + 2.0 * 5.0, rel_tol=1e-6)
    old = fvs.forget_vector_loss(*args, ForgetVectorConfig(lam=2.0, arithmetic_penalty="delta"), weights=w)
    assert math.isclose(float(old["norm"]), 1.0 / 3, rel_tol=1e-6)  # negkit's earlier ‖Σ w_c δ_c‖₂ / B
    # without weights (a class-wise δ) the norm term is ‖δ‖₂ / B whatever the option
    assert math.isclose(float(fvs.forget_vector_loss(*args, ForgetVectorConfig())["norm"]), 1.0 / 3, rel_tol=1e-6)


@pytest.mark.parametrize("penalty,step", [("weights", 1.0), ("delta", 1.0 / 10)])
def test_learn_arithmetic_steps_on_the_weight_penalty_by_hand(penalty, step):
    # A model blind to its input (zero weights): CE and margin give w no gradient, only the
    # norm term moves it. With δ_0, δ_1 orthonormal, ‖Σ w_c δ_c‖₂ = ‖w‖₂, so one SGD step
    # (no momentum, no decay, lr 0.5, λ 1) from w = (3, 4) is w − 0.5·(0.6, 0.8)·s, with
    # s = 1 for λ‖w‖₂ (reference) and s = 1/B = 1/10 for λ‖δ(w)‖₂ / B.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(model[1].weight)
    data = TensorImageDataset(torch.rand(10, 1, 2, 2), [0, 0, 0, 1, 1, 1, 2, 2, 2, 1])
    forget, retain = _split(data, 0)
    vectors = {c: ForgetVector(torch.eye(4)[c].reshape(1, 2, 2)) for c in (0, 1)}
    cfg = ForgetVectorConfig(epochs=1, steps_per_epoch=1, batch_size=10, augment="none", lr=0.5, momentum=0.0,
                             weight_decay=0.0, arithmetic_penalty=penalty)
    fv = fvs.learn_arithmetic(model, vectors, forget, retain, cfg, init=[3.0, 4.0], device="cpu")
    w = [float(x) for x in fv.meta["weights"].split(",")]
    assert w == pytest.approx([3.0 - 0.5 * 0.6 * step, 4.0 - 0.5 * 0.8 * step], rel=1e-6)


def test_config_defaults_are_the_reference_settings():
    cfg = ForgetVectorConfig()
    assert (cfg.tau, cfg.lr, cfg.alpha, cfg.lam, cfg.beta) == (1.0, 0.2, 1.0, 1.0, 5.0)
    assert (cfg.batching, cfg.batch_size, cfg.augment, cfg.crop_padding) == ("joint", 256, "crop_flip", 4)
    assert cfg.arithmetic_penalty == "weights" and cfg.epochs == 60
    assert fvs.PAPER_BETAS == (3, 4, 5, 6, 7, 8, 9, 10)
    assert min(fvs.PAPER_EPOCHS) == 60 and max(fvs.PAPER_EPOCHS) == 190
    for field, bad in (("batching", "interleaved"), ("augment", "rotate"), ("arithmetic_penalty", "l1")):
        with pytest.raises(ValueError, match=f"unknown {field}"):
            ForgetVectorConfig(**{field: bad})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ForgetVectorConfig(batch_size=0)


# ----------------------------------------------------------------------------- batching and views
def _indexed_sets(n_forget=10, n_retain=30):
    """Image i is filled with the value i, so a batch tells which images it holds."""
    x = torch.arange(n_forget + n_retain, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2).clone()
    data = TensorImageDataset(x, [0] * n_forget + [1] * n_retain)
    return (Subset(data, list(range(n_forget))), Subset(data, list(range(n_forget, n_forget + n_retain))))


def test_joint_batches_shuffle_forget_and_retain_together():
    forget, retain = _indexed_sets()
    steps, batches = fvs.iterate_batches(forget, retain, ForgetVectorConfig(batch_size=16))
    assert steps == 3  # ceil(40 / 16)
    epoch = [next(batches) for _ in range(steps)]
    assert [len(y) for _, y, _ in epoch] == [16, 16, 8]
    ids = torch.cat([x[:, 0, 0, 0] for x, _, _ in epoch]).long()
    assert sorted(ids.tolist()) == list(range(40))  # every image exactly once per epoch
    flags = torch.cat([f for _, _, f in epoch])
    assert flags.dtype == torch.bool and int(flags.sum()) == 10  # forget images in their share, not oversampled
    assert torch.equal(flags, ids < 10)
    assert not torch.equal(ids, torch.arange(40))  # shuffled, forget and retain interleaved
    second = torch.cat([next(batches)[0][:, 0, 0, 0] for _ in range(steps)]).long()
    assert sorted(second.tolist()) == list(range(40)) and not torch.equal(second, ids)  # reshuffled per pass


def test_mixed_batches_keep_a_fixed_forget_share():
    forget, retain = _indexed_sets()
    cfg = ForgetVectorConfig(batching="mixed", forget_batch_size=4, retain_batch_size=12)
    steps, batches = fvs.iterate_batches(forget, retain, cfg)
    assert steps == 3  # one pass over the 30 retain images, 12 at a time
    # forget images first, 4 per step while D_f lasts (10 = 4 + 4 + 2, then it cycles); retain 12, 12, 6
    for n_forget, n_retain in ((4, 12), (4, 12), (2, 6), (4, 12)):
        x, _, flags = next(batches)
        ids = x[:, 0, 0, 0].long()
        assert flags.tolist() == [True] * n_forget + [False] * n_retain and torch.equal(flags, ids < 10)


def test_crop_flip_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])       # (1, 1, 2, 2)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(fvs.crop_flip(x, padding=0, flip=False, generator=gen), x)
    flips = fvs.crop_flip(x.expand(64, -1, -1, -1), padding=0, flip=True, generator=gen)
    mirrored = torch.tensor([[[2.0, 1.0], [4.0, 3.0]]])
    assert all(torch.equal(v, x[0]) or torch.equal(v, mirrored) for v in flips)
    assert 10 < sum(torch.equal(v, mirrored) for v in flips) < 54
    # padding 1: the 2x2 windows of [[0 0 0 0], [0 1 2 0], [0 3 4 0], [0 0 0 0]], e.g. the
    # top-left one [[0, 0], [0, 1]] and the bottom-right one [[4, 0], [0, 0]]
    padded = torch.zeros(4, 4)
    padded[1:3, 1:3] = x[0, 0]
    crops = [padded[i:i + 2, j:j + 2] for i in range(3) for j in range(3)]
    assert torch.equal(crops[0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(crops[8], torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
    views = fvs.crop_flip(x.expand(400, -1, -1, -1), padding=1, flip=False, generator=gen)[:, 0]
    seen = [next(k for k, c in enumerate(crops) if torch.equal(v, c)) for v in views]  # StopIteration: not a crop
    assert set(seen) == set(range(9))  # every offset is drawn
    views = fvs.crop_flip(x.expand(400, -1, -1, -1), padding=1, flip=True, generator=gen)[:, 0]
    candidates = crops + [c.flip(-1) for c in crops]
    assert all(any(torch.equal(v, c) for c in candidates) for v in views)


def test_learning_sees_crop_flip_views(toy):
    # The model's first layer receives x' + δ where x' is a view of a training image:
    # with augment="crop" and padding 1 some rows or columns of x' are the zero padding.
    model, data = toy
    forget, retain = _split(data, 0)
    cfg = from_dict(ForgetVectorConfig, FAST, epochs=1, steps_per_epoch=1, lr=0.0, augment="crop", crop_padding=1)
    fvs.learn_forget_vector(model, forget, retain, cfg, device="cpu")
    seen = model[0].seen  # δ stayed 0 (lr 0): these are the views themselves
    assert seen.shape == (32, 1, 4, 4)
    edge_zero = torch.stack([seen[:, 0, 0, :].abs().sum(1), seen[:, 0, -1, :].abs().sum(1),
                             seen[:, 0, :, 0].abs().sum(1), seen[:, 0, :, -1].abs().sum(1)]).eq(0).any(0)
    assert edge_zero.float().mean() > 0.5  # 8 of 9 offsets shift the image (clean toy images have no zero edge)
    assert not data.tensors[0].view(120, 4, 4)[:, 0, :].eq(0).all(1).any()


# ----------------------------------------------------------------------------- vector.py and learn.py
def test_delta_is_added_to_raw_pixels_before_normalisation(toy):
    model, data = toy
    fv = ForgetVector(torch.linspace(-0.1, 0.1, 16).reshape(1, 4, 4))
    x = data.tensors[0][:5]
    model.eval()
    with torch.no_grad():
        model(fv(x))
    norm = model[0]
    assert torch.equal(norm.seen, x + fv.delta)  # the Normalize layer received x + δ, raw pixels
    with pytest.raises(ValueError, match="does not match"):
        fv(torch.zeros(2, 1, 5, 5))
    # the same with the kit's own model: its first layer, Normalize, receives x + δ
    from negkit import models

    net = models.get("small_resnet", num_classes=3, in_channels=1, mean=(0.3,), std=(0.25,)).eval()
    seen = []
    net.normalize.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        net(fv(x))
    assert torch.equal(seen[0], x + fv.delta)
    with pytest.raises(ValueError, match="shape of one image"):
        ForgetVector(torch.zeros(2, 1, 4, 4))


def test_learning_leaves_weights_bitwise_untouched_and_forgets(toy):
    model, data = toy
    model.train()  # BatchNorm in train mode would move its running stats if we let it
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget, retain = _split(data, 0)
    fv = fvs.learn_forget_vector(model, forget, retain, FAST, device="cpu")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert fv.shape == (1, 4, 4) and fv.norm() > 0
    assert len(fv.history) == FAST.epochs
    f_data = _toy_data((1, 4, 4), seed=1)  # fresh samples from the same distribution
    y = f_data.targets
    x = f_data.tensors[0]
    model.eval()
    with torch.no_grad():
        pred = model(fv(x)).argmax(1)
        pred0 = model(x).argmax(1)
    # the forget class is no longer recognised; the others still are
    assert float((pred0[y == 0] == 0).float().mean()) > 0.9
    assert float((pred[y == 0] == 0).float().mean()) < 0.5
    assert float((pred[y != 0] == y[y != 0]).float().mean()) > 0.8


@pytest.mark.parametrize("bound,eps", [("linf", 0.05), ("l2", 0.3)])
def test_bounds_and_clip(toy, bound, eps):
    model, data = toy
    forget, retain = _split(data, 1)
    cfg = from_dict(ForgetVectorConfig, FAST, bound=bound, eps=eps, clip=True)
    fv = fvs.learn_forget_vector(model, forget, retain, cfg, device="cpu")
    p = float("inf") if bound == "linf" else 2
    assert fv.norm(p) <= eps + 1e-5
    assert fv.norm(p) > 0.5 * eps  # the constraint is active: learning pushed δ to the boundary region
    out = fv(data.tensors[0])
    assert out.min() >= 0 and out.max() <= 1


def test_other_input_size_and_channels():
    shape = (3, 6, 5)
    data = _toy_data(shape, n_per_class=20)
    model = _train_toy_model(data, shape, bn=False)
    forget, retain = _split(data, 2)
    fv = fvs.learn_forget_vector(model, forget, retain, FAST, device="cpu")
    assert fv.shape == shape
    assert model(fv(data.tensors[0])).shape == (60, 3)
    with pytest.raises(ValueError, match="does not match"):
        fv(torch.zeros(1, 3, 5, 6))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown bound"):
        ForgetVectorConfig(bound="l1")
    with pytest.raises(ValueError, match="eps > 0"):
        ForgetVectorConfig(bound="linf")
    with pytest.raises(ValueError, match="unknown ForgetVectorConfig key"):
        from_dict(ForgetVectorConfig, {"lamda": 1.0})


def test_empty_forget_set_is_refused(toy):
    model, data = toy
    with pytest.raises(ValueError, match="forget set is empty"):
        fvs.learn_forget_vector(model, Subset(data, []), data, FAST)


# ----------------------------------------------------------------------------- select.py
def test_select_classwise_picks_beta_and_epochs_on_validation(tmp_path, toy):
    from types import SimpleNamespace

    model, data = toy
    bundle = SimpleNamespace(train=data, val=_toy_data((1, 4, 4), n_per_class=10, seed=2))
    cfg = from_dict(ForgetVectorConfig, FAST, epochs=99)  # epochs and β come from the grids
    vectors, grid = fvs.select_classwise(model, bundle, [0], cfg, betas=[0.0, 5.0], epochs=[3, 1], device="cpu")
    assert sorted(zip(grid.beta, grid.epochs)) == [(0.0, 1), (0.0, 3), (5.0, 1), (5.0, 3)]
    # the score: accuracy left on the class plus accuracy lost on the others (validation, in points)
    assert (grid.score == grid.val_acc_c + grid.val_acc_others_original - grid.val_acc_others).all()
    chosen = grid[grid.chosen]
    best = grid[grid.score == grid.score.min()]
    assert len(chosen) == 1 and chosen.l2.iloc[0] == best.l2.min()  # lowest score, ties to the smaller ‖δ‖₂
    # β = 0 has no forgetting term, so class 0 stays recognised; β = 5 forgets it
    assert grid[grid.beta == 0.0].val_acc_c.min() > 90 and chosen.beta.iloc[0] == 5.0
    fv = vectors[0]
    assert (fv.meta["beta"], fv.meta["epochs"]) == ("5.0", str(int(chosen.epochs.iloc[0])))
    # the kept snapshot is exactly δ learned for the chosen number of epochs
    forget, retain = _split(data, 0)
    fresh = fvs.learn_forget_vector(model, forget, retain, from_dict(ForgetVectorConfig, cfg, beta=5.0,
                                    epochs=int(chosen.epochs.iloc[0])), device="cpu")
    assert torch.equal(fv.delta, fresh.delta)

    # then to fewer epochs: with α = β = λ = 0 the loss is 0, δ stays 0 and every epoch scores the same
    tied, tgrid = fvs.select_classwise(model, bundle, [1], from_dict(ForgetVectorConfig, FAST, lam=0.0, alpha=0.0),
                                       betas=[0.0], epochs=[1, 2], device="cpu")
    assert tgrid.chosen.tolist() == [True, False] and tied[1].meta["epochs"] == "1"

    cached, cgrid = fvs.select_classwise(model, bundle, [0], cfg, betas=[0.0, 5.0], epochs=[1, 3],
                                         cache_dir=tmp_path, device="cpu")
    assert torch.equal(cached[0].delta, fv.delta) and cgrid.round(6).equals(grid.round(6))
    again, agrid = fvs.select_classwise(model, bundle, [0], cfg, betas=[0.0, 5.0], epochs=[1, 3],
                                        cache_dir=tmp_path, device="cpu")  # from disk: same vector and grid
    assert torch.equal(again[0].delta, fv.delta) and agrid.round(6).equals(grid.round(6))
    with pytest.raises(ValueError, match="another ForgetVectorConfig"):
        fvs.select_classwise(model, bundle, [0], cfg, betas=[5.0], epochs=[1, 3], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no validation set"):
        fvs.select_classwise(model, data, [0], cfg, betas=[5.0], epochs=[1])
    with pytest.raises(ValueError, match="at least one"):
        fvs.select_classwise(model, bundle, [0], cfg, betas=[], epochs=[1])


# ----------------------------------------------------------------------------- learn_classwise and arithmetic.py
@pytest.fixture(scope="module")
def classwise(toy):
    model, data = toy
    return fvs.learn_classwise(model, data, [0, 1, 2], FAST, device="cpu")


def test_learn_classwise(toy, classwise):
    model, data = toy
    assert sorted(classwise) == [0, 1, 2]
    assert classwise[1].meta["task"] == "class_1"
    assert not torch.equal(classwise[0].delta, classwise[1].delta)
    with pytest.raises(ValueError, match=r"unknown class\(es\) \[7\]"):
        fvs.learn_classwise(model, data, [7], FAST)


def test_combine_by_hand_and_bad_weights(classwise):
    d = {k: v.delta for k, v in classwise.items()}
    fv = fvs.combine(classwise, [2.0, 0.0, -1.0])
    assert torch.allclose(fv.delta, 2 * d[0] - d[2])
    assert torch.allclose(fvs.combine(classwise, {0: 2.0, 2: -1.0}).delta, fv.delta)
    assert torch.allclose((2 * classwise[0] + -classwise[2]).delta, fv.delta)
    with pytest.raises(ValueError, match="2 weights for 3 forget vectors"):
        fvs.combine(classwise, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"class\(es\) \[5\]"):
        fvs.combine(classwise, {5: 1.0})
    with pytest.raises(ValueError, match="different shapes"):
        fvs.combine({0: classwise[0], 1: ForgetVector(torch.zeros(3, 4, 4))}, [1.0, 1.0])


def test_learn_arithmetic_for_a_union_of_classes(toy, classwise):
    model, data = toy
    y = data.targets
    forget = Subset(data, torch.nonzero(y != 2).flatten().tolist())   # forget classes 0 and 1
    retain = Subset(data, torch.nonzero(y == 2).flatten().tolist())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = from_dict(ForgetVectorConfig, FAST, lr=0.005)  # w multiplies whole vectors: smaller steps
    fv = fvs.learn_arithmetic(model, classwise, forget, retain, cfg, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    w = [float(x) for x in fv.meta["weights"].split(",")]
    assert len(w) == 3 and any(x != 0 for x in w)
    assert torch.allclose(fv.delta, fvs.combine(classwise, w).delta, atol=1e-5)
    # the learned weights lower the paper's objective on the whole task, compared with w = 0 (δ = 0)
    assert _objective(model, forget, retain, fv.delta, cfg) < _objective(model, forget, retain, 0 * fv.delta, cfg)
    with pytest.raises(ValueError, match="2 weights for 3"):
        fvs.learn_arithmetic(model, classwise, forget, retain, FAST, init=[0.0, 1.0])
    wrong = {0: ForgetVector(torch.zeros(1, 5, 5))}
    with pytest.raises(ValueError, match="input resolution"):
        fvs.learn_arithmetic(model, wrong, forget, retain, FAST)


def test_save_load_round_trip(tmp_path, classwise):
    fv = ForgetVector(classwise[0].delta, clip=True, meta={"task": "class_0"})
    path = tmp_path / "fv.safetensors"
    fv.save(path)
    back = ForgetVector.load(path)
    assert torch.equal(back.delta, fv.delta) and back.clip and back.meta["task"] == "class_0"
    from negkit import io

    io.save_state_dict({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a forget vector file"):
        ForgetVector.load(tmp_path / "other.safetensors")


def test_cached_vectors_from_earlier_runs_are_reused(tmp_path, toy):
    # The on-disk cache key is the JSON of the config, keys sorted. Files written before the
    # batching / augmentation / arithmetic-penalty options existed (e.g. under runs/) carry the
    # old fields only; a config that learns the same way (mixed batches, clean images, the δ
    # penalty) must keep finding them, and the new defaults must not.
    import json

    model, data = toy
    old_fields = dict(alpha=1.0, beta=5.0, tau=1.0, lam=1.0, lr=0.05, momentum=0.9, weight_decay=5e-4, gamma=0.9,
                      epochs=5, steps_per_epoch=8, forget_batch_size=8, retain_batch_size=24, bound="none",
                      eps=0.0, clip=False, init="zeros", seed=0)
    legacy = from_dict(ForgetVectorConfig, old_fields, batching="mixed", augment="none", arithmetic_penalty="delta")
    old = ForgetVector(torch.full((1, 4, 4), 0.123), meta={"task": "class_1", "classes": "1", "method": "forget_vector",
                                                           "config": json.dumps(old_fields, sort_keys=True)})
    old.save(tmp_path / "class_1.safetensors")
    got = fvs.learn_classwise(model, data, [1], legacy, cache_dir=tmp_path, device="cpu")[1]
    assert torch.equal(got.delta, old.delta) and got.meta == old.meta
    for other in (from_dict(ForgetVectorConfig, legacy, tau=2.0), from_dict(ForgetVectorConfig, old_fields)):
        with pytest.raises(ValueError, match="another ForgetVectorConfig"):
            fvs.learn_classwise(model, data, [1], other, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- report.py
def test_per_class_accuracy_and_classwise_report(toy, classwise):
    model, data = toy
    x, y = data.tensors
    fv = classwise[0]
    model.eval()
    with torch.no_grad():
        pred = model(fv(x)).argmax(1)
    acc = fvs.per_class_accuracy(model, data, input_transform=fv, device="cpu")
    for c in range(3):
        assert acc[c] == pytest.approx(100 * float((pred[y == c] == c).float().mean()))
    report = fvs.classwise_report(model, classwise, data, device="cpu").set_index("class")
    assert list(report.index) == [0, 1, 2]
    assert report.loc[0, "acc_c"] == pytest.approx(acc[0])
    assert report.loc[0, "TA_others"] == pytest.approx(100 * float((pred[y != 0] == y[y != 0]).float().mean()))
    assert (report.UA == 100 - report.acc_c).all()
    assert (report.acc_c_original > 90).all()


def test_split_within_classes(toy):
    _, data = toy
    forget, retain = fvs.split_within_classes(data, [0, 2], 0.25, seed=3)
    y = data.targets
    fy = y[torch.as_tensor(forget.indices)]
    assert len(forget) == 20 and set(fy.tolist()) <= {0, 2}          # 25 % of the 80 images of classes 0, 2
    assert sorted(forget.indices + retain.indices) == list(range(len(data)))
    assert fvs.split_within_classes(data, [0, 2], 0.25, seed=3)[0].indices == forget.indices
    with pytest.raises(ValueError, match="no image of class"):
        fvs.split_within_classes(data, [9], 0.5)


# ----------------------------------------------------------------------------- report.run_benchmark
def test_run_benchmark_records_next_to_weight_based_methods(tmp_path, toy, classwise):
    from negkit import benchmark
    from negkit.results import read_results

    model, data = toy
    forget, retain = _split(data, 0)
    retrain_metrics = {"UA": 100.0, "RA": 99.0, "TA": 98.0, "MIA": 90.0}
    setup = benchmark.Setup(
        cfg=benchmark.BenchmarkConfig(), run_dir=tmp_path, scenario="class_0", device="cpu", bundle=None,
        split=None, forget=forget, retain=retain, test=retain, val=data, val_forget=forget, val_control=retain,
        original=model, retrain=model, original_metrics={}, retrain_metrics=retrain_metrics, control_reference=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fv, metrics = fvs.run_benchmark(setup, FAST)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    df = read_results(tmp_path / "results.jsonl")
    rows = df[df.method == "forget_vector"].set_index("metric").value
    assert sorted(rows.index) == ["MIA", "RA", "TA", "UA", "avg_gap"]
    assert rows["UA"] == pytest.approx(metrics["UA"]) and metrics["UA"] > 50  # class 0 is forgotten
    assert rows["avg_gap"] == pytest.approx(sum(abs(metrics[k] - retrain_metrics[k]) for k in metrics) / 4)
    assert (setup.scenario_dir / "forget_vectors" / "forget_vector.safetensors").exists()  # run_dir/seed_<s>/class_0

    again, _ = fvs.run_benchmark(setup, FAST)  # rerun: the cached δ is reused, no duplicate records
    assert torch.equal(again.delta, fv.delta)
    assert len(read_results(tmp_path / "results.jsonl")) == len(df)
    with pytest.raises(ValueError, match="another ForgetVectorConfig"):
        fvs.run_benchmark(setup, from_dict(ForgetVectorConfig, FAST, beta=1.0))

    arith, _ = fvs.run_benchmark(setup, from_dict(ForgetVectorConfig, FAST, lr=0.005), vectors=classwise)
    df = read_results(tmp_path / "results.jsonl")
    assert set(df.method) == {"forget_vector", "forget_vector_arithmetic"}
    assert len(arith.meta["weights"].split(",")) == 3
    other = {**classwise, 2: 2 * classwise[2]}
    with pytest.raises(ValueError, match="other class-wise vectors"):
        fvs.run_benchmark(setup, from_dict(ForgetVectorConfig, FAST, lr=0.005), vectors=other)


def test_clip_classifier_takes_a_forget_vector_at_its_input_resolution():
    from negkit.clip import heads
    from negkit.clip import model as cm

    torch.manual_seed(0)
    backbone = cm.load_clip(cm.TINY_MODEL, None, device="cpu")
    head = heads.build_head(backbone, ["cat", "dog", "car"], ["a photo of a {}."], device="cpu")
    clf = cm.ImageClassifier.from_backbone(backbone, head)
    x = torch.rand(48, 3, backbone.image_size, backbone.image_size)
    data = TensorImageDataset(x, torch.arange(48) % 3)  # random-init CLIP: any labels make a loss to lower
    forget, retain = _split(data, 0)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    cfg = from_dict(ForgetVectorConfig, FAST, epochs=3, steps_per_epoch=4)
    fv = fvs.learn_forget_vector(clf, forget, retain, cfg, device="cpu")
    assert fv.shape == (3, backbone.image_size, backbone.image_size)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    assert _objective(clf, forget, retain, fv.delta, cfg) < _objective(clf, forget, retain, 0 * fv.delta, cfg)
