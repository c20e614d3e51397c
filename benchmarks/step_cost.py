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

With `--chunks 0,32,16,8` it also prints, for each gradient-caching chunk (`grad_cache_chunk`; 0 = off) with and
without open_clip's gradient checkpointing, the estimated peak memory of a step on one GPU holding the whole batch,
the extra compute, and the CPU time of the same step at the micro batch, measured side by side:

- Measured on this CPU at the micro batch: the bytes autograd saves in CLIP's towers (inside and outside their
  transformer blocks, and the largest single block) and in the rest of the model (temporal transformer, GIM, LIM,
  losses), the inputs of the towers' blocks (what checkpointing keeps), the tower outputs a cached step holds; the
  FLOPs of one plain and one cached step (`FlopCounterMode` counts the second tower pass and any recomputation); and
  the CPU seconds of each, side by side.
- Extrapolated to the batch: each byte count is measured at the micro batch and at twice it, which separates what
  grows with the pairs from what does not (under autocast, the 16-bit copies of the weights each forward saves),
  then the peak model
      plain step:   static + towers(B) + rest(B)
      cached step:  static + B * cached outputs and their gradients + max(rest(B), towers(chunk))
  (the rest's graph is freed by its backward before the chunks are encoded again); with checkpointing the towers
  hold their blocks' inputs and one block's activations at a time (recomputed in the backward). Allocator slack,
  temporaries that are not saved for the backward and the CUDA context (about 0.5-1 GiB) are not included.

    python benchmarks/step_cost.py --preset msrvtt-vitb32-1gpu --micro 4 --chunks 0,64,32,16,8
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glscl.config import load_config
from glscl.model import GLSCL
from glscl.train import GradCache, autocast, param_groups

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
    lines = [
        f"{c['preset']} ({c['precision']}), batch {c['batch']}: ESTIMATES from a measured micro batch of "
        f"{c['micro']} scaled x{c['batch'] // c['micro']} (CPU, {c['cpu_seconds_micro']:.1f} s for the micro step)",
        f"  parameters               {c['params'] / 1e6:8.1f} M",
        f"  FLOPs per training step  {c['flops'] / 1e12:8.2f} TFLOP (forward + backward)",
        f"  activations saved        {c['activation_bytes'] / GB:8.1f} GiB for the whole batch "
        f"({c['activation_bytes'] / GB / 4:.1f} GiB per GPU on 4 GPUs)",
        f"  weights+grads+optimizer  {c['static_bytes'] / GB:8.2f} GiB per GPU",
        f"  an MSR-VTT epoch         {steps} steps ({pairs:,} pairs / {c['batch']})",
    ]
    for name, peak in PEAKS.items():
        t = c['flops'] / (peak * mfu)
        lines.append(f"  {name:<28} {t:6.2f} s/step, {t * steps / 60:6.1f} min/epoch on one GPU at {mfu:.0%} "
                     f"utilisation; {t * steps / 60 / 4:5.1f} min on 4")
    return '\n'.join(lines)



def _blocks(model) -> list:
    "The transformer blocks of CLIP's two towers (what open_clip's gradient checkpointing recomputes)."
    m = model.clip.model
    return list(m.transformer.resblocks) + list(m.visual.transformer.resblocks)


def tower_bytes(model, cfg, x: dict) -> dict:
    """Bytes measured at the micro batch `x`: saved for the backward by the towers outside their blocks, inside them
    (all and the largest block), by the rest of the model; the blocks' inputs; the tower outputs (values, as a cached
    step holds them)."""
    where, saved, inputs = ['towers'], {}, [0]
    def pack(t):
        saved[where[-1]] = saved.get(where[-1], 0) + t.numel() * t.element_size(); return t
    def enter(mod, args):
        inputs[0] += args[0].numel() * args[0].element_size(); where.append(('block', id(mod)))
    def leave(mod, args, out): where.pop()
    hooks = [h for b in _blocks(model) for h in (b.register_forward_pre_hook(enter), b.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(cfg, 'cpu'):
            text = model.text_tower(x['ids'], x['mask'])
            video = model.frame_tower(x['frames'], x['frame_mask'])
            outputs = sum(v.numel() * v.element_size() for d in (text, video) for v in d.values()
                          if v.is_floating_point())
            where[:] = ['rest']
            model(x, towers=dict(text=text, video=video))['loss']
    finally:
        for h in hooks: h.remove()
    blocks = [v for k, v in saved.items() if isinstance(k, tuple)]
    return dict(outside=saved.get('towers', 0), blocks=sum(blocks), largest_block=max(blocks),
                rest=saved.get('rest', 0), block_inputs=inputs[0], outputs=outputs)


def _step(model, cfg, x, chunk: int):
    "One forward + backward of `x`: plain (chunk 0) or through `GradCache`."
    model.zero_grad(set_to_none=True)
    if chunk:
        gc = GradCache(model, chunk, lambda: autocast(cfg, 'cpu'))
        gc.backward(gc.forward(x)['loss'])
    else:
        with autocast(cfg, 'cpu'): loss = model(x)['loss']
        loss.backward()


def _fit(small: dict, large: dict, n: int) -> tuple:
    "Per-pair slope and batch-independent part of each byte count, from measurements at n and 2n pairs."
    pp = {k: (large[k] - small[k]) / n for k in small}
    return pp, {k: max(0.0, small[k] - n * pp[k]) for k in small}


def grad_cache_costs(preset: str = 'msrvtt-vitb32-1gpu', micro: int = 4, chunks=(0, 32, 16, 8),
                     batch: int = None, **overrides) -> dict:
    """Peak memory (estimated for the batch), extra FLOPs and CPU time (both measured at `micro` pairs) of a step for
    each chunk in `chunks` (0: no gradient caching), without and with gradient checkpointing. Bytes are measured at
    `micro` and 2 x `micro` pairs: what grows with the batch, and what does not (under autocast, the 16-bit copies of
    the weights that each forward saves: about 0.3 GiB for ViT-B/32, once per forward whatever the batch or the
    chunk)."""
    cfg = load_config(preset, clip_pretrained='none', lim_dropout=0.0, **overrides)
    B = batch or cfg.batch_size
    torch.manual_seed(0)
    model = GLSCL(cfg).train()
    x = micro_batch(cfg, micro)
    pp, fixed = _fit(tower_bytes(model, cfg, x), tower_bytes(model, cfg, micro_batch(cfg, 2 * micro, seed=1)), micro)
    trainable = [p for g in param_groups(model, cfg) for p in g['params']]
    static = (sum(p.numel() * p.element_size() for p in model.parameters())
              + sum(3 * p.numel() * p.element_size() for p in trainable))     # weights, gradients, two moments
    def towers(n, ckpt):                                           # what the towers hold for the backward of n pairs
        if not ckpt: return fixed['outside'] + fixed['blocks'] + n * (pp['outside'] + pp['blocks'])
        return (fixed['outside'] + fixed['largest_block']
                + n * (pp['outside'] + pp['block_inputs'] + pp['largest_block']))
    rest = fixed['rest'] + B * pp['rest']
    rows, measured = [], {}
    for ckpt in (False, True):
        model.clip.model.set_grad_checkpointing(ckpt)
        for chunk in chunks:
            if (ckpt, bool(chunk)) not in measured:   # any chunk costs the same FLOPs: measured once, in 2 chunks
                c = max(1, micro // 2) if chunk else 0
                with FlopCounterMode(display=False) as fc: _step(model, cfg, x, c)
                t0 = time.perf_counter(); _step(model, cfg, x, c); sec = time.perf_counter() - t0
                measured[ckpt, bool(chunk)] = (fc.get_total_flops(), sec)
            if chunk: peak = static + B * 2 * pp['outputs'] + max(rest, towers(min(chunk, B), ckpt))
            else: peak = static + towers(B, ckpt) + rest
            rows.append(dict(chunk=chunk, checkpointing=ckpt, peak_bytes=peak))
    model.clip.model.set_grad_checkpointing(False)
    f0, s0 = measured[False, False]
    for r in rows:
        f, sec = measured[r['checkpointing'], bool(r['chunk'])]
        r.update(flops=f / micro * B, extra_flops=f / f0 - 1, cpu_time_ratio=sec / s0)
    return dict(preset=preset, batch=B, micro=micro, precision=cfg.precision, static_bytes=static,
                per_pair=pp, fixed=fixed, rows=rows, cpu_seconds_plain=s0)


def grad_cache_report(c: dict, mfu: float = 0.35, pairs: int = MSRVTT_TRAIN_PAIRS,
                      gpu: str = 'A100 (312 TFLOP/s bf16/fp16)') -> str:
    GiB, steps = 1024 ** 3, pairs // c['batch']
    pp = c['per_pair']
    lines = [f"{c['preset']} ({c['precision']}), batch {c['batch']} on ONE GPU, gradient caching: peak memory "
             f"ESTIMATED from a micro batch of {c['micro']} and {2 * c['micro']} measured on this CPU and scaled; "
             "extra FLOPs counted and CPU time measured at the micro batch (side by side, CPU, "
             f"{c['cpu_seconds_plain']:.1f} s for the plain micro step); GPU time ESTIMATED as FLOPs / "
             f"({gpu.split(' (')[0]} peak x {mfu:.0%})",
             f"  measured per pair (MiB): towers' saved activations {(pp['outside'] + pp['blocks']) / 2**20:.1f} "
             f"(largest block {pp['largest_block'] / 2**20:.2f}, block inputs {pp['block_inputs'] / 2**20:.2f}), rest "
             f"of the model {pp['rest'] / 2**20:.2f}, tower outputs {pp['outputs'] / 2**20:.3f}; whatever the batch: "
             f"towers {(c['fixed']['outside'] + c['fixed']['blocks']) / 2**20:.0f}, rest "
             f"{c['fixed']['rest'] / 2**20:.0f}; weights+grads+optimizer {c['static_bytes'] / GiB:.2f} GiB",
             f"  {'chunk':>5} {'checkpointing':>13} {'peak GiB (est.)':>15} {'extra FLOPs':>11} "
             f"{'CPU time x (meas.)':>18} {'GPU s/step (est.)':>17} {'min/epoch (est.)':>16}"]
    peak = PEAKS[gpu]
    for r in c['rows']:
        t = r['flops'] / (peak * mfu)
        lines.append(f"  {r['chunk'] if r['chunk'] else 'off':>5} {'on' if r['checkpointing'] else 'off':>13} "
                     f"{r['peak_bytes'] / GiB:15.1f} {r['extra_flops']:+11.0%} {r['cpu_time_ratio']:18.2f} {t:17.2f} "
                     f"{t * steps / 60:16.1f}")
    lines.append("  (the chunk does not change the FLOPs: a cached step always encodes the batch twice; on a GPU small "
                 "chunks also run the towers less efficiently, which this CPU estimate cannot show)")
    return '\n'.join(lines)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='msrvtt-vitb32'); ap.add_argument('--micro', type=int, default=2)
    ap.add_argument('--batch', type=int, default=None); ap.add_argument('--mfu', type=float, default=0.35)
    ap.add_argument('--chunks', default=None,
                    help='comma-separated grad_cache_chunk values (0 = off) to compare, e.g. 0,32,16,8')
    a = ap.parse_args()
    if a.chunks is None: print(report(step_cost(a.preset, a.micro, a.batch), a.mfu))
    else:
        print(grad_cache_report(grad_cache_costs(a.preset, a.micro,
                                                 tuple(int(v) for v in a.chunks.split(',')), a.batch), a.mfu))
