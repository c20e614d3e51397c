"""Search without training, on the toy world: GIM over CLIP's raw frame features (glscl.search.zero_shot_config: no
checkpoint, no temporal transformer, no LIM) beside mean pooling of the same features (CLIP4Clip's meanP, also
untrained) and beside a trained GLSCL checkpoint, each pair with paired bootstrap intervals of the difference
(glscl.metrics.compare, as `glscl compare` prints them) and each row with its own interval (metric_interval).

    OMP_NUM_THREADS=1 python benchmarks/zero_shot_toy.py [--preset toy] [--checkpoint runs/toy/last.pt]

The checkpoint must be of the same preset (same tiny CLIP; the toy recipe freezes its image tower, so all three read
the same frame features). Evaluated on the preset's test split with glscl.train.evaluate (the evaluation path).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glscl.config import load_config
from glscl.metrics import compare, metric_interval, format_compare, format_interval
from glscl.model import GLSCL
from glscl.search import zero_shot_config
from glscl.train import evaluate, model_from_checkpoint


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--preset', default='toy'); ap.add_argument('--checkpoint', default='runs/toy/last.pt')
    ap.add_argument('--n-boot', type=int, default=2000)
    a = ap.parse_args(argv)
    sims = {}
    zs = zero_shot_config(a.preset)
    sims['zero-shot GIM'] = evaluate(GLSCL(zs).eval(), zs, progress=False)
    mp = load_config(a.preset, head='meanp')
    sims['zero-shot meanP'] = evaluate(GLSCL(mp).eval(), mp, progress=False)
    m = model_from_checkpoint(a.checkpoint)
    if m.cfg.clip_model != zs.clip_model:
        raise ValueError(f"{a.checkpoint} uses {m.cfg.clip_model}, the preset {zs.clip_model}: use a checkpoint of "
                         f"preset {a.preset}")
    sims['trained GLSCL'] = evaluate(m, m.cfg, progress=False)
    cv = sims['zero-shot GIM']['caption_video']
    n_q, n_v = sims['zero-shot GIM']['sim'].shape
    print(f"preset {a.preset}, test split: {n_q} captions, {n_v} videos; trained checkpoint {a.checkpoint} (preset "
          f"{m.cfg.name})")
    for k, r in sims.items():
        print(format_interval(metric_interval(r['sim'], r['caption_video'], n_boot=a.n_boot), title=f"\n{k}"))
    for b in ('zero-shot meanP', 'trained GLSCL'):
        print()
        print(format_compare(compare(sims['zero-shot GIM']['sim'], sims[b]['sim'], cv, n_boot=a.n_boot),
                             names=('zero-shot GIM', b),
                             title=f"zero-shot GIM against {b} (paired bootstrap over captions)"))
    return 0


if __name__ == '__main__':
    sys.exit(main())
