"""CLIP preprocessing three ways, side by side: open_clip's own eval transform on PIL images (the reference),
glscl.video.clip_preprocess (torchvision.transforms.v2 resize and centre crop on the uint8 batch, then
normalize_frames), and the float alternative (F.interpolate bicubic antialiased in float32, clamped and rounded: the
code clip_preprocess used before, and what torchvision does on a GPU).

For each set of frames: how far each is from open_clip, in grey levels (one grey level is 1/(255 std) after
normalising), and, where the toy-pretrained tiny CLIP is cached (data/glscl-tiny-toy.pt), the lowest cosine between
its image features of the reference and of each. Then the time per clip of 12 frames, one thread (a DataLoader
worker's view), by torch.utils.benchmark (methods in turn, median of --repeats rounds: benchmarks/timing.py), with the
ratio to clip_preprocess.

    python benchmarks/bench_preprocess.py [--min-run-time 0.3] [--repeats 3] [--threads 1]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved
import open_clip
from glscl.video import OPENAI_STD, clip_preprocess, normalize_frames
from glscl.tinyclip import toy_frames


def float_preprocess(frames, S):
    """The float alternative: F.interpolate (bicubic, antialias) in float32, clamp and round to grey levels, crop,
    normalise."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    nh, nw = (S, int(S * w / h)) if h <= w else (int(S * h / w), S)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255).round_()
    top, left = int(round((nh - S) / 2)), int(round((nw - S) / 2))
    return normalize_frames(x[..., top:top + S, left:left + S])


def open_clip_preprocess(frames, S):
    "The reference: open_clip's eval transform, one PIL image at a time."
    tf = open_clip.image_transform(S, is_train=False)
    return torch.stack([tf(Image.fromarray(f)) for f in frames])


METHODS = {"open_clip (PIL, per frame)": open_clip_preprocess,
           "clip_preprocess (torchvision v2, uint8)": clip_preprocess, "float F.interpolate": float_preprocess}


def textured(n, h, w, seed):
    "Gradients, a sinusoidal texture, noise and a sharp-edged block: the high frequencies a resize must filter."
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        a, b, c = g.uniform(2, 20, 3)
        img = np.stack([xx * 255 / w, yy * 255 / h, 128 + 90 * np.sin(xx / a) * np.cos(yy / b)], -1)
        img = img + g.normal(0, c, img.shape)
        img[h // 4:h // 2, w // 3:w // 2] = g.integers(0, 256, 3)
        out.append(img.clip(0, 255).astype(np.uint8))
    return np.stack(out)


def cases():
    toy, _ = toy_frames(8, seed=3)
    return [("toy 96x96 -> 64", toy, 64), ("toy 96x96 -> 224 (upscale)", toy, 224),
            ("textured 240x320 -> 224", textured(4, 240, 320, 0), 224),
            ("textured 320x240 -> 224", textured(4, 320, 240, 1), 224),
            ("textured 240x320 -> 64", textured(4, 240, 320, 2), 64),
            ("odd 101x137 -> 64", textured(4, 101, 137, 3), 64), ("odd 257x99 -> 224", textured(4, 257, 99, 4), 224),
            ("odd 225x225 -> 224", textured(4, 225, 225, 5), 224),
            ("noise 240x320 -> 224", np.random.default_rng(6).integers(0, 256, (4, 240, 320, 3), dtype=np.uint8), 224)]


def tiny_clip():
    "The toy-pretrained tiny CLIP's image tower, only if it is already cached (building it takes minutes)."
    from glscl.clip import data_dir, load_clip
    import glscl.tinyclip  # noqa: F401  (registers glscl-tiny with open_clip)
    if not (data_dir() / "glscl-tiny-toy.pt").exists(): return None
    return load_clip("glscl-tiny", "toy").eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-run-time", type=float, default=0.3, help="seconds per blocked_autorange")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the methods in turn")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    level = 1 / (255 * torch.tensor(OPENAI_STD).view(3, 1, 1))
    model = tiny_clip()
    others = list(METHODS)[1:]
    print("grey levels off open_clip's transform (mean / max over all pixels)"
          + ("; tiny CLIP: lowest cosine of image features to the reference's" if model is not None else ""))
    print(f"| frames | {' | '.join(others)} |\n| --- |" + " ---: |" * len(others))
    ok = True
    for name, frames, S in cases():
        ref = open_clip_preprocess(frames, S)
        cells = []
        for k in others:
            x = METHODS[k](frames, S)
            d = (x - ref).abs() / level
            cell = f"{d.mean().item():.4f} / {d.max().item():.0f}"
            if model is not None and S == model.image_size:
                with torch.no_grad():
                    f0, f1 = (F.normalize(model.model.encode_image(t), dim=-1) for t in (ref, x))
                cell += f"; cos {(f0 * f1).sum(-1).min().item():.6f}"
            cells.append(cell)
            if k.startswith("clip_preprocess") and d.max() > 2.01: ok = False
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"\ntime per clip of 12 frames, {a.threads} thread(s), torch.utils.benchmark blocked_autorange "
          f"(min_run_time {a.min_run_time} s), methods in turn, median of {a.repeats} rounds")
    print(f"| clip | {' | '.join(METHODS)} |\n| --- |" + " ---: |" * len(METHODS))
    for name, frames, S in [("toy 12 x 96x96 -> 64", toy_frames(12, seed=1)[0], 64),
                            ("12 x 240x320 -> 224", textured(12, 240, 320, 9), 224)]:
        t, _ = interleaved({k: (lambda f=f, frames=frames, S=S: f(frames, S)) for k, f in METHODS.items()}, a.repeats,
                           a.min_run_time, a.threads)
        base = t["clip_preprocess (torchvision v2, uint8)"]
        print(f"| {name} | " + " | ".join(f"{1e3 * v:.2f} ms ({v / base:.2f}x)" for v in t.values()) + " |")
    print("\nclip_preprocess within 2 grey levels of open_clip everywhere:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
