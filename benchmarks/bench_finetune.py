"""Fine-tuning throughput of CLIP's image encoder: the default fp32 (as the reference) vs the bf16 option.

Both runs go through :func:`negkit.train.train` (the kit's one loop) on the same
synthetic [0, 1] images, with the classifier of :mod:`negkit.clip`
(Normalize -> image encoder -> L2 -> frozen zero-shot head):

* ``fp32-eager``: amp=False, fused=False, compile=False: the kit's default, as the
  reference trains;
* ``bf16 option``: bf16 autocast + fused AdamW (``TrainConfig(amp=True, fused=True)``,
  ``PoolConfig(precision="bf16", fused=True)``; CUDA only, on CPU both flags are no-ops);
* ``kit+compile`` (``--compile``): the same plus ``torch.compile``.

Throughput is measured on the second epoch (the first absorbs warm-up and
compilation). The script also prints how many evaluation passes the λ search of
:mod:`negkit.clip.negation` costs for the paper's protocol.

Usage::

    python benchmarks/bench_finetune.py                       # ViT-B-32, batch 128 (GPU target: >= 2.5x)
    python benchmarks/bench_finetune.py --model negkit-tiny-ViT --batch 32 --steps 10   # quick CPU run
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from negkit.clip import model as cm
from negkit.clip.heads import build_head
from negkit.data import TensorImageDataset
from negkit.evaluate import coef_grid, resolve_device
from negkit.train import TrainConfig, train


def throughput(backbone: cm.ClipBackbone, head: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               cfg: TrainConfig, device: torch.device) -> float:
    """Images per second of the second of two epochs over ``images``."""
    model = cm.ImageClassifier.from_backbone(backbone, head)
    data = TensorImageDataset(images, labels)
    res = train(model, data, cfg, device=device, trainable=lambda n: n.startswith("visual."), progress=False)
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
    runs = {"fp32-eager (default)": TrainConfig(**base, amp=False, fused=False, compile=False),
            "bf16 + fused AdamW (option)": TrainConfig(**base, amp=True, fused=True, compile=False)}
    if args.compile:
        runs["bf16 + fused + torch.compile"] = TrainConfig(**base, amp=True, fused=True, compile=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model} image encoder, batch {args.batch}, {args.steps} steps/epoch, on {name}")
    out = {"model": args.model, "batch": args.batch, "device": name, "images_per_s": {}}
    for label, cfg in runs.items():
        t0 = time.perf_counter()
        ips = throughput(backbone, head, images, labels, cfg, device)
        out["images_per_s"][label] = ips
        print(f"  {label:28s} {ips:9.1f} images/s   (run {time.perf_counter() - t0:.1f} s)")
    ref = out["images_per_s"]["fp32-eager (default)"]
    for label, ips in out["images_per_s"].items():
        print(f"  speed-up {label:28s} {ips / ref:5.2f}x")
    if device.type != "cuda":
        print("  (bf16 autocast and fused AdamW act on CUDA only: on CPU the runs should match; GPU target >= 2.5x)")

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
