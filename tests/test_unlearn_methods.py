"""Known answers of the newer unlearning methods: IU, BE, BS, NegGrad+, SCRUB, SSD, and their grids."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from negkit import unlearn
from negkit.data import TensorImageDataset
from negkit.evaluate import evaluate
from negkit.models import get as get_model
from negkit.unlearn import be, bs, iu, scrub, ssd

NEW = ("iu", "be", "bs", "neggrad_plus", "scrub", "ssd")


@pytest.fixture(scope="module")
def data(quadrant_forget_retain):
    return quadrant_forget_retain


@pytest.fixture(scope="module")
def original(data):
    from negkit.train import train

    torch.manual_seed(0)
    model = get_model("small_resnet", num_classes=4, in_channels=1, widths=(4, 8), mean=(0.3,), std=(0.3,))
    train(model, torch.utils.data.ConcatDataset(data), dict(epochs=8, batch_size=16, lr=0.05), progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def linear():
    """Softmax regression on 1×2×2 images: 3 classes, 15 parameters, known gradients."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(9, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    return model, TensorImageDataset(x[:3], y[:3]), TensorImageDataset(x[3:], y[3:])


def _grads(model, ds):
    """Per-sample gradients of CE by the formula: ∇W = (p − e_y) xᵀ, ∇b = p − e_y; rows (weight, bias)."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    rows = []
    for i in range(len(ds)):
        x, y = ds[i]
        x = x.flatten().double()
        r = torch.softmax(w @ x + b, 0) - F.one_hot(torch.tensor(y), 3).double()
        rows.append(torch.cat([torch.outer(r, x).flatten(), r]))
    return torch.stack(rows)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_grids_are_small_and_valid():
    assert set(unlearn.GRIDS) == set(NEW) and set(NEW) <= set(unlearn.list_methods())
    for name, grid in unlearn.GRIDS.items():
        assert all(2 <= len(v) <= 4 for v in grid.values()), name
        for combo in itertools.product(*grid.values()):
            unlearn.default_config(name, **dict(zip(grid, combo)))


def test_reference_defaults():
    s = unlearn.default_config("scrub")
    assert (s.epochs, s.lr, s.alpha, s.gamma, s.temperature, s.msteps, s.weight_decay) == (
        3, 5e-4, 0.001, 0.99, 4.0, 2, 5e-4)
    d = unlearn.default_config("ssd")
    assert (d.alpha, d.dampening, d.importance_data) == (10.0, 1.0, "train")
    assert unlearn.default_config("iu").alpha == 0.2 and unlearn.default_config("iu").samples == 1000
    assert unlearn.default_config("bs").eps == 0.1
    assert unlearn.default_config("neggrad_plus").beta == 0.999
    with pytest.raises(ValueError, match="beta"):
        unlearn.default_config("neggrad_plus", beta=1.5)


def test_neggrad_plus_with_all_weight_on_retain_is_fine_tuning(original, data):
    forget, retain = data
    common = dict(epochs=2, lr=0.05, batch_size=10, weight_decay=5e-4, seed=3)
    ft = unlearn.get("ft")(original, forget, retain, unlearn.default_config("ft", **common), device="cpu",
                           progress=False)
    cfg = unlearn.default_config("neggrad_plus", beta=1.0, forget_batch_size=5, **common)
    ng = unlearn.get("neggrad_plus")(original, forget, retain, cfg, device="cpu", progress=False)
    assert _same(ft, ng)  # weights and BatchNorm statistics, bitwise
    push = unlearn.get("neggrad_plus")(original, forget, retain, unlearn.default_config(
        "neggrad_plus", beta=0.5, forget_batch_size=5, **common), device="cpu", progress=False)
    assert evaluate(push, forget)["loss"] > evaluate(ft, forget)["loss"]


def test_scrub_loss_plan_and_its_fine_tuning_limit(original, data):
    forget, retain = data
    assert scrub.scrub_plan(3, 2) == [0, 1, 0, 1, 1] and scrub.scrub_plan(2, 0) == [1, 1]
    x = torch.stack([retain[i][0] for i in range(5)])
    s, t = original(x).detach(), torch.randn(5, 4)
    log_ps, log_pt = torch.log_softmax(s / 4, 1), torch.log_softmax(t / 4, 1)
    want = (log_pt.exp() * (log_pt - log_ps)).sum() / 5 * 16  # T²·mean_b KL(p_t ‖ p_s)
    assert torch.allclose(scrub.distill_kl(s, t, 4.0), want, atol=1e-6)
    cfg = unlearn.default_config("scrub", alpha=0.5, gamma=2.0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    loss = scrub.scrub_loss(teacher, cfg)
    y = torch.tensor([retain[i][1] for i in range(5)])
    with torch.no_grad():
        kl = scrub.distill_kl(original(x), teacher(x), 4.0)
        assert torch.allclose(loss(original, x, -1 - y, 0.0), -kl)  # a D_f batch: max-step
        assert torch.allclose(loss(original, x, y, 0.0), 2.0 * F.cross_entropy(original(x), y) + 0.5 * kl)
    # one epoch of min-steps only, CE alone: SCRUB is fine-tuning on D_r, bitwise
    common = dict(epochs=1, lr=0.05, batch_size=10, seed=1)
    ft = unlearn.get("ft")(original, forget, retain, unlearn.default_config("ft", **common), device="cpu",
                           progress=False)
    limit = unlearn.get("scrub")(original, forget, retain, unlearn.default_config(
        "scrub", msteps=0, alpha=0.0, gamma=1.0, **common), device="cpu", progress=False)
    assert _same(ft, limit)
    # max-steps move the student away from the teacher on D_f: compared with the same run without them
    def gap(msteps):
        out = unlearn.get("scrub")(original, forget, retain, unlearn.default_config(
            "scrub", epochs=2, msteps=msteps, lr=0.05, batch_size=8), device="cpu", progress=False).eval()
        xs = torch.stack([forget[i][0] for i in range(len(forget))])
        with torch.no_grad():
            return float(scrub.distill_kl(out(xs), original(xs), 4.0))
    assert gap(2) > 1.5 * gap(0)


def test_iu_is_a_woodfisher_step_by_hand(linear):
    model, forget, retain = linear
    cfg = unlearn.default_config("iu", alpha=3.0, batch_size=2)
    out = unlearn.get("iu")(model, forget, retain, cfg, device="cpu", progress=False)
    g_f, g_r = _grads(model, forget), _grads(model, retain)
    n_f, n_r = len(forget), len(retain)
    n = n_f + n_r
    v = g_f.sum(0) / n - g_r.sum(0) * n_f / (n * n_r)
    fisher = torch.eye(15, dtype=torch.float64) + g_r.T @ g_r / n_r  # every retain image (samples ≥ 6)
    step = 3.0 * torch.linalg.solve(fisher, v)
    got = torch.cat([(out[1].weight - model[1].weight).flatten(), out[1].bias - model[1].bias]).detach()
    assert torch.allclose(got, step, atol=1e-10)
    # Woodbury on random gradients against the dense inverse
    grads, vec = torch.randn(5, 12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    dense = torch.linalg.solve(torch.eye(12, dtype=torch.float64) + grads.T @ grads / 5, vec)
    assert torch.allclose(iu.woodfisher_solve(grads, vec), dense, atol=1e-10)


def test_ssd_dampens_by_hand_and_leaves_the_model_alone_at_alpha_inf(linear, original, data, tmp_path):
    model, forget, retain = linear
    out = unlearn.get("ssd")(model, forget, retain, unlearn.default_config("ssd", alpha=1.0, dampening=0.5),
                             device="cpu", progress=False)
    # one batch each (batch 128): importance = (mean gradient over the batch)²
    imp_f = _grads(model, forget).mean(0) ** 2
    imp_d = torch.cat([_grads(model, forget), _grads(model, retain)]).mean(0) ** 2
    theta = torch.cat([model[1].weight.flatten(), model[1].bias]).detach()
    sel = imp_f > imp_d
    want = torch.where(sel, theta * torch.clamp(0.5 * imp_d / imp_f, max=1.0), theta)
    got = torch.cat([out[1].weight.flatten(), out[1].bias]).detach()
    assert 0 < int(sel.sum()) < 15 and torch.allclose(got, want, atol=1e-12)
    assert torch.equal(ssd.dampen(theta, imp_f, imp_d, 1.0, 0.5)[~sel], theta[~sel])  # untouched, bitwise
    forget, retain = data
    same = unlearn.get("ssd")(original, forget, retain, unlearn.default_config("ssd", alpha=float("inf")),
                              device="cpu", progress=False, out_dir=tmp_path / "inf")
    assert same is not original and _same(same, original)
    again = unlearn.get("ssd")(original, forget, retain, unlearn.default_config("ssd", alpha=float("inf")),
                               device="cpu", progress=False, out_dir=tmp_path / "inf")  # loaded from the folder
    assert _same(again, original) and (tmp_path / "inf" / "ssd" / "done.json").exists()
    with pytest.raises(ValueError, match=r"another config \(differs in \['alpha'\]"):
        unlearn.get("ssd")(original, forget, retain, unlearn.default_config("ssd", alpha=2.0), device="cpu",
                           progress=False, out_dir=tmp_path / "inf")


def test_be_widens_then_narrows_the_head(original, data):
    forget, retain = data
    x = torch.stack([forget[i][0] for i in range(len(forget))])
    wide = copy.deepcopy(original)
    be.widen_head(wide, 1, seed=0)
    with torch.no_grad():
        assert wide(x).shape == (16, 5) and torch.equal(wide(x)[:, :4], original(x))
        be.narrow_head(wide, 4)
        assert torch.equal(wide(x), original(x))
    assert be.head_of(original)[0] == "fc"
    still = unlearn.get("be")(original, forget, retain, unlearn.default_config("be", lr=0.0, epochs=2),
                              device="cpu", progress=False)
    orig = dict(original.named_parameters())
    assert all(torch.equal(p, orig[n]) for n, p in still.named_parameters())  # lr 0: weights unchanged
    out = unlearn.get("be")(original, forget, retain, unlearn.default_config("be", lr=0.05, epochs=5),
                            device="cpu", progress=False)
    assert out.fc.out_features == 4
    assert evaluate(out, forget)["acc"] < evaluate(original, forget)["acc"]


def test_bs_labels_are_the_fgsm_neighbours_class(original, data):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    x = torch.tensor([[[[0.5, 0.45]]]])
    # ∇_x CE = Wᵀ(p − e_0) has signs (−, +): x' = (0.4, 0.55) rounded to 1/255 → class 1 wins
    assert bs.boundary_labels(model, x, torch.tensor([0]), 0.1).tolist() == [1]
    assert bs.boundary_labels(model, x, torch.tensor([0]), 0.0).tolist() == [0]  # no step, no crossing
    forget, retain = data
    out = unlearn.get("bs")(original, forget, retain, unlearn.default_config("bs", lr=0.05, epochs=5, eps=0.3),
                            device="cpu", progress=False)
    assert evaluate(out, forget)["acc"] < evaluate(original, forget)["acc"]
