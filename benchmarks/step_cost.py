"""Estimates of one training step's compute and GPU memory for a preset at its batch size (default: msrvtt-vitb32,
batch 128), measured on this machine at a small batch and scaled. They are estimates: say so wherever they are quoted.

- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward + backward of GLSCL at a micro batch of b pairs
  (random weights of the preset's CLIP architecture: the count does not depend on the values), times B / b. The
  similarity and the losses grow with B^2, but at B = 128 they are far below 1% of the encoders.
- Activation memory: the bytes of every tensor autograd saves for the backward (`saved_tensors_hooks`) at batch b,
  times B / b, in the preset's precision (autocast and the half CLIP save 16-bit tensors).
- Static memory: weights, gradients and optimizer state in the preset's dtypes (fp32 master weights and two fp32
  moments under AMP; the released half CLIP keeps fp16 weights, gradients and moments).
- Time: FLOPs / (peak x utilisation) for a few GPUs' dense 16-bit peaks and an assumed utilisation.

    python benchmarks/step_cost.py [--preset msrvtt-vitb32] [--micro 2] [--mfu 0.35]
"""
import argparse, sys, time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glscl.config import load_config
from glscl.model import GLSCL
from glscl.train import autocast, param_groups

PEAKS = {'A100 (312 TFLOP/s bf16/fp16)': 312e12, 'H100 SXM (989)': 989e12, 'V100 (125 fp16)': 125e12}
MSRVTT_TRAIN_PAIRS = 180_000


def micro_batch(cfg, b: int, seed: int = 0) -> dict:
    "b random pairs at the preset's sizes: full captions and every frame slot real (the largest step)."
    g = torch.Generator().manual_seed(seed)
    L, N, S = cfg.max_words, cfg.max_frames, cfg.image_size
    ids = torch.randint(1, 49000, (b, L), generator=g); ids[:, 0] = 49406; ids[:, -1] = 49407
    return dict(ids=ids, mask=torch.ones(b, L, dtype=torch.bool), frames=torch.randn(b, N, 3, S, S, generator=g),
                frame_mask=torch.ones(b, N, dtype=torch.bool))


def step_cost(preset: str = 'msrvtt-vitb32', micro: int = 2, batch: int = None, **overrides) -> dict:
    "FLOPs, activation bytes (measured at `micro` pairs, scaled to `batch`) and static bytes of one training step."
    cfg = load_config(preset, clip_pretrained='none', lim_dropout=0.0, **overrides)
    B = batch or cfg.batch_size
    torch.manual_seed(0)
    model = GLSCL(cfg).train()
    x = micro_batch(cfg, micro)
    saved = []
    def pack(t):
        saved.append(t.numel() * t.element_size()); return t
    t0 = time.perf_counter()
    with FlopCounterMode(display=False) as fc:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(cfg, 'cpu'):
            loss = model(x)['loss']
        loss.backward()
    seconds = time.perf_counter() - t0
    trainable = [p for g in param_groups(model, cfg) for p in g['params']]
    n_params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optim = sum(2 * p.numel() * p.element_size() for p in trainable)      # Adam's two moments in the weights' dtype
    scale = B / micro
    return dict(preset=preset, batch=B, micro=micro, precision=cfg.precision, params=n_params,
                flops=fc.get_total_flops() * scale, activation_bytes=sum(saved) * scale,
                static_bytes=weights + grads + optim, cpu_seconds_micro=seconds)


def report(c: dict, mfu: float = 0.35, pairs: int = MSRVTT_TRAIN_PAIRS) -> str:
    steps = pairs // c['batch']
    GB = 1024 ** 3
    lines = [f"{c['preset']} ({c['precision']}), batch {c['batch']}: ESTIMATES from a measured micro batch of {c['micro']} "
             f"scaled x{c['batch'] // c['micro']} (CPU, {c['cpu_seconds_micro']:.1f} s for the micro step)",
             f"  parameters               {c['params'] / 1e6:8.1f} M",
             f"  FLOPs per training step  {c['flops'] / 1e12:8.2f} TFLOP (forward + backward)",
             f"  activations saved        {c['activation_bytes'] / GB:8.1f} GiB for the whole batch "
             f"({c['activation_bytes'] / GB / 4:.1f} GiB per GPU on 4 GPUs)",
             f"  weights+grads+optimizer  {c['static_bytes'] / GB:8.2f} GiB per GPU",
             f"  an MSR-VTT epoch         {steps} steps ({pairs:,} pairs / {c['batch']})"]
    for name, peak in PEAKS.items():
        t = c['flops'] / (peak * mfu)
        lines.append(f"  {name:<28} {t:6.2f} s/step, {t * steps / 60:6.1f} min/epoch on one GPU at {mfu:.0%} utilisation; "
                     f"{t * steps / 60 / 4:5.1f} min on 4")
    return '\n'.join(lines)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='msrvtt-vitb32'); ap.add_argument('--micro', type=int, default=2)
    ap.add_argument('--batch', type=int, default=None); ap.add_argument('--mfu', type=float, default=0.35)
    a = ap.parse_args()
    print(report(step_cost(a.preset, a.micro, a.batch), a.mfu))
