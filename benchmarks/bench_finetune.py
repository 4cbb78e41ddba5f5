"""Fine-tuning throughput of CLIP's image encoder: the default fp32 (as the reference) vs the bf16 option.

All runs go through :func:`negkit.train.train` (the kit's one loop) on the same
synthetic [0, 1] images, with the classifier of :mod:`negkit.clip`
(Normalize -> image encoder -> L2 -> frozen zero-shot head), printed side by side:

* ``fp32 (default)``: amp=False, fused=False, compile=False: the kit's default, as the
  reference trains;
* on CUDA, ``bf16 + fused AdamW (option)``: ``TrainConfig(amp=True, fused=True)``,
  i.e. ``PoolConfig(precision="bf16", fused=True)``;
* without a GPU, ``bf16 CPU autocast``: the same forward and loss under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, through the loop's ``loss_fn`` hook
  (the kit's ``amp`` flag acts on CUDA only, so on CPU it would time fp32 twice); the
  script says that no GPU was available;
* ``--compile``: the bf16 run plus ``torch.compile``.

Throughput is measured on the second epoch (the first absorbs warm-up and
compilation). The script also prints how many evaluation passes the λ search of
:mod:`negkit.clip.negation` costs for the paper's protocol.

Usage::

    python benchmarks/bench_finetune.py                       # ViT-B-32, batch 128
    python benchmarks/bench_finetune.py --model negkit-tiny-ViT --batch 32 --steps 10   # quick CPU run
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import torch
import torch.nn.functional as F

from negkit.clip import model as cm
from negkit.clip.heads import build_head
from negkit.data import TensorImageDataset
from negkit.coefs import coef_grid
from negkit.evaluate import resolve_device
from negkit.train import TrainConfig, train


def cpu_bf16_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, progress_frac: float):
    """The default cross-entropy with the forward pass under CPU bf16 autocast (a ``loss_fn`` of ``train``)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    return F.cross_entropy(logits.float(), labels), logits


def throughput(backbone: cm.ClipBackbone, head: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               cfg: TrainConfig, device: torch.device, loss_fn=None) -> float:
    """Images per second of the second of two epochs over ``images``."""
    model = cm.ImageClassifier.from_backbone(backbone, head)
    data = TensorImageDataset(images, labels)
    res = train(model, data, cfg, device=device, trainable=lambda n: n.startswith("visual."), progress=False,
                loss_fn=loss_fn)
    epoch_seconds = res.history[1]["seconds"] - res.history[0]["seconds"]
    return len(data) / epoch_seconds


def eval_passes(n_members: int, n_merges: int, n_coefs: int) -> dict[str, int]:
    """Evaluation passes of :func:`negkit.clip.negation.run_task_negation` for one dataset.

    λ = 0 reuses the zero-shot accuracies, so each candidate (merge or single
    member) costs 2 validation passes per non-zero λ plus 2 test passes at λ*;
    the zero-shot model costs 4 passes (control ones shared across datasets).
    """
    candidates = n_members + n_merges
    val = candidates * (n_coefs - 1) * 2
    test = candidates * 2
    return {"candidates": candidates, "val_passes": val, "test_passes": test, "zeroshot_passes": 4,
            "total": val + test + 4}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init, no download)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    backbone = cm.load_clip(args.model, None, device="cpu")
    head = build_head(backbone, [f"class {i}" for i in range(10)], ["a photo of a {}."], device="cpu")
    n = args.batch * args.steps
    images = (torch.rand(n, 3, backbone.image_size, backbone.image_size) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (n,))
    base = dict(epochs=2, batch_size=args.batch, lr=1e-5, optimizer="adamw", weight_decay=0.1, warmup_steps=0,
                grad_clip=1.0, drop_last=True)
    fp32 = TrainConfig(**base, amp=False, fused=False, compile=False)
    cuda = device.type == "cuda"
    # label -> (config, loss_fn): on CUDA the kit's amp flag; without a GPU, CPU autocast through the loss hook
    runs = {"fp32 (default)": (fp32, None)}
    if cuda:
        runs["bf16 + fused AdamW (option)"] = (TrainConfig(**base, amp=True, fused=True, compile=False), None)
    elif torch.amp.is_autocast_available("cpu"):
        runs["bf16 CPU autocast"] = (fp32, cpu_bf16_loss)
    if args.compile:
        runs["bf16 + torch.compile"] = ((TrainConfig(**base, amp=True, fused=True, compile=True), None) if cuda
                                        else (dataclasses.replace(fp32, compile=True), cpu_bf16_loss))

    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model} image encoder, batch {args.batch}, {args.steps} steps/epoch, on {name}")
    if not cuda:
        print("  no GPU was available: bf16 is torch's CPU autocast, not the CUDA figure the option is for")
    out = {"model": args.model, "batch": args.batch, "device": name, "gpu": cuda, "images_per_s": {}}
    for label, (cfg, loss_fn) in runs.items():
        t0 = time.perf_counter()
        ips = throughput(backbone, head, images, labels, cfg, device, loss_fn)
        out["images_per_s"][label] = ips
        print(f"  {label:28s} {ips:9.1f} images/s   (run {time.perf_counter() - t0:.1f} s)")
    ref = out["images_per_s"]["fp32 (default)"]
    out["speedup"] = {label: ips / ref for label, ips in out["images_per_s"].items()}
    print("  " + "   ".join(f"{label}: {x:.2f}x" for label, x in out["speedup"].items()) + "   (vs fp32)")

    coefs = len(coef_grid(0.0, 1.0, 0.05))
    passes = eval_passes(n_members=30, n_merges=4, n_coefs=coefs)
    out["lambda_search"] = passes
    print(f"λ search per dataset (30 members + 4 merges, {coefs} λ): {passes}")
    print(f"  = {passes['val_passes'] // 2} negated encoders × ({{dataset}}Val + ImageNetVal [5,000 images])")
    if args.json:
        from negkit import io
        io.save_json(out, args.json)


if __name__ == "__main__":
    main()
