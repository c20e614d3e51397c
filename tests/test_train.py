"""The training loop and evaluation: optimizer groups, schedule, batches, atomic checkpoints, bitwise resume, the NaN
stop, unreadable-video skips, the evaluation cache (hit, miss, stale, foreign) and the metric rows of `evaluate`."""
import json
import math
import os
import shutil
import logging
import pytest
import torch
from glscl.config import load_config
from glscl.toyworld import make_toy_msrvtt
from glscl.model import GLSCL
from glscl import train as T
import glscl.step
from glscl.metrics import retrieval_metrics

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A small toy world: 24 videos (20 train x 10 captions, 4 test)."
    return make_toy_msrvtt(tmp_path_factory.mktemp('toy')/'toy', n_videos=24, seed=3)

@pytest.fixture
def cfg(world, tmp_path):
    "Toy preset on the small world, a random tiny CLIP (no pretraining needed), batches of 16: 12 steps an epoch."
    return load_config('toy', anno_dir=world, video_dir=world/'videos', toy_videos=24, clip_pretrained='none',
                       batch_size=16, eval_batch_size=8, epochs=1, out_dir=tmp_path/'run')

def copy_world(world, dst):
    shutil.copytree(world, dst)
    return dst

# --- optimizer and schedule ------------------------------------------------------------------------------------------

def test_param_groups(cfg):
    m = GLSCL(cfg)
    groups = T.param_groups(m, cfg)
    names = {id(p): n for n, p in m.named_parameters()}
    where = {names[id(p)]: g for g in groups for p in g['params']}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(where) == trainable and len(where) == sum(len(g['params']) for g in groups)   # each trainable one once
    assert cfg.freeze_visual and not any(n.startswith('clip.model.visual.') for n in where)
    for n, _ in m.named_parameters():
        if n not in trainable: continue
        g = where[n]
        assert g['lr'] == pytest.approx(cfg.lr * (cfg.coef_lr if n.startswith('clip.') else 1))
    no_decay = ['clip.model.ln_final.weight', 'clip.model.ln_final.bias', 'lim.queries', 'temporal.pos',
                'clip.model.logit_scale', 'clip.model.token_embedding.weight', 'clip.model.positional_embedding',
                'temporal.blocks.0.ln_1.weight', 'temporal.blocks.0.attn.in_proj_bias',
                'lim.decoder.layers.0.norm1.weight', 'lim.decoder.layers.2.linear2.bias']
    decay = ['clip.model.text_projection', 'clip.model.transformer.resblocks.0.mlp.c_fc.weight',
             'temporal.blocks.3.attn.out_proj.weight', 'lim.decoder.layers.0.linear1.weight',
             'lim.decoder.layers.1.multihead_attn.in_proj_weight']
    for n in no_decay: assert where[n]['weight_decay'] == 0.0, n
    for n in decay: assert where[n]['weight_decay'] == cfg.weight_decay, n
    with pytest.raises(ValueError, match='optimizer'): T.make_optimizer(m, cfg.replace(optimizer='sgd9'))

def test_released_groups(cfg):
    "The released rule: names with `clip.` at lr * coef_lr; weight decay on every name without `bias`."
    c = cfg.replace(weight_decay_rule='released', freeze_visual=False, freeze_conv1=True)
    m = GLSCL(c)
    where = {n: g for g in T.param_groups(m, c) for p in g['params'] for n, q in m.named_parameters() if q is p}
    assert 'clip.model.visual.conv1.weight' not in where                                   # frozen: in no group
    for n, p in m.named_parameters():
        if not p.requires_grad: continue
        assert where[n]['weight_decay'] == (0.0 if 'bias' in n else c.weight_decay), n
        assert where[n]['lr'] == pytest.approx(c.lr * (c.coef_lr if 'clip.' in n else 1)), n
    for n in ('clip.model.ln_final.weight', 'lim.queries', 'clip.model.logit_scale', 'temporal.pos'):
        assert where[n]['weight_decay'] == c.weight_decay                                  # decayed, as released

def bertadam_reference(w, grads, lr, b1, b2, eps, wd):
    "The released update, one scalar at a time: no bias correction, decay inside the step."
    w, m, v = list(w), [0.0] * len(w), [0.0] * len(w)
    for g in grads:
        for i in range(len(w)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
            w[i] = w[i] - lr * (m[i] / (math.sqrt(v[i]) + eps) + wd * w[i])
    return w

def test_bertadam_against_formula():
    torch.manual_seed(0)
    w0, grads = torch.randn(6, dtype=torch.float64), [torch.randn(6, dtype=torch.float64) for _ in range(5)]
    p = torch.nn.Parameter(w0.clone())
    opt = T.BertAdam([p], lr=0.03, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    for g in grads: p.grad = g.clone(); opt.step()
    ref = bertadam_reference(w0.tolist(), [g.tolist() for g in grads], 0.03, 0.9, 0.98, 1e-6, 0.2)
    assert torch.allclose(p.detach(), torch.tensor(ref, dtype=torch.float64), atol=1e-12)
    # it differs from bias-corrected AdamW (whose first step is a full lr)
    q = torch.nn.Parameter(w0.clone())
    a = torch.optim.AdamW([q], lr=0.03, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    q.grad = grads[0].clone(); a.step()
    assert not torch.allclose(q.detach(),
                              torch.tensor(bertadam_reference(w0.tolist(), [grads[0].tolist()], 0.03, 0.9,
                                                              0.98, 1e-6, 0.2), dtype=torch.float64))
    # fp16 weights keep fp16 moments (the released half CLIP: no master copy)
    h = torch.nn.Parameter(torch.ones(3, dtype=torch.float16)); h.grad = torch.full((3,), 0.5, dtype=torch.float16)
    o = T.BertAdam([h], lr=1e-3); o.step()
    assert o.state[h]['exp_avg'].dtype == torch.float16 and h.dtype == torch.float16
    with pytest.raises(ValueError, match='betas'): T.BertAdam([h], betas=(0.9, 1.0))
    cfg = load_config('toy', optimizer='bertadam', clip_pretrained='none')
    assert isinstance(T.make_optimizer(GLSCL(cfg), cfg), T.BertAdam)

def test_released_schedule_first_step_zero():
    "The released schedule with t_total = epochs x steps per epoch: the first update has lr 0, warmup then cosine."
    total = 5 * 7
    f = [T.warmup_cosine(s, total, 0.1) for s in range(total)]
    assert (f[0] == 0 and f[3] == pytest.approx(3 / 3.5)
            and f[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 35))))

def test_warmup_cosine_reference():
    total, w = 50, 0.1
    for s in range(total):
        x = s / total
        ref = x / w if x < w else 0.5 * (1 + math.cos(math.pi * x))
        assert T.warmup_cosine(s, total, w) == pytest.approx(ref)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = T.make_scheduler(opt, load_config('toy'), 10)
    lrs = []
    for _ in range(10): lrs.append(opt.param_groups[0]['lr']); opt.step(); sched.step()
    assert (lrs[0] == 0 and lrs[1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(0.1 * math.pi)))
            and lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(0.9 * math.pi))))

def test_epoch_batches():
    b = T.EpochBatches(23, 5, seed=7, epoch=1)
    full = list(b)
    assert len(full) == 4 == len(b) and all(len(x) == 5 for x in full) and len(set(sum(full, []))) == 20
    assert full == list(T.EpochBatches(23, 5, seed=7, epoch=1))             # same seed and epoch, same order
    assert full != list(T.EpochBatches(23, 5, seed=7, epoch=2))
    assert list(T.EpochBatches(23, 5, 7, 1, start=2)) == full[2:] and len(T.EpochBatches(23, 5, 7, 1, start=2)) == 2
    parts = [list(T.EpochBatches(24, 6, 7, 1, rank=r, world_size=3)) for r in range(3)]
    glob = [sum((p[i] for p in parts), []) for i in range(4)]
    assert [sorted(b) for b in glob] == [sorted(b) for b in T.EpochBatches(24, 6, 7, 1)]   # same global batches, any W
    assert glob == T.EpochBatches(24, 6, 7, 1, world_size=3).batches()
    # PyTorch's DistributedSampler (the released sampler) deals the same permutation
    ds = torch.utils.data.DistributedSampler(range(24), num_replicas=3, rank=1, shuffle=True, seed=7, drop_last=True)
    ds.set_epoch(1)
    assert sum(parts[1], []) == list(ds)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(8)).tolist()   # one process: seed + epoch
    assert full == [perm[i * 5:(i + 1) * 5] for i in range(4)]
    with pytest.raises(ValueError, match='world_size'): T.EpochBatches(24, 5, world_size=2)
    with pytest.raises(ValueError, match='batch'): T.EpochBatches(3, 5)

# --- checkpoints -----------------------------------------------------------------------------------------------------

def test_atomic_save_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    p = tmp_path/'last.pt'
    T.atomic_save({'x': 1}, p)
    real = torch.save
    def crash(obj, f, *a, **k):
        f.write(b'half a checkpoint'); raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError, match='disk full'): T.atomic_save({'x': 2}, p)
    monkeypatch.setattr(torch, 'save', real)
    assert torch.load(p)['x'] == 1 and [q.name for q in tmp_path.iterdir()] == ['last.pt']

def test_checkpoint_of_another_shape_names_keys(cfg, tmp_path):
    m = GLSCL(cfg)
    p = T.save_checkpoint(tmp_path/'a.pt', m)
    other = GLSCL(cfg.replace(n_queries=4), encoder=m.clip)
    with pytest.raises(ValueError, match=r"lim\.queries .*n_queries=8 \(here 4\)"): T.load_checkpoint(p, other)
    meanp = GLSCL(cfg.replace(head='meanp'), encoder=m.clip)
    with pytest.raises(ValueError, match=r"unexpected keys .*lim\."): T.load_checkpoint(p, meanp)
    (tmp_path/'bad.pt').write_bytes(p.read_bytes()[:500])
    with pytest.raises(ValueError, match='truncated'): T.read_checkpoint(tmp_path/'bad.pt')
    torch.save({'weights': 1}, tmp_path/'clip.pt')
    with pytest.raises(ValueError, match='not a glscl training checkpoint'): T.read_checkpoint(tmp_path/'clip.pt')
    with pytest.raises(FileNotFoundError): T.read_checkpoint(tmp_path/'nope.pt')
    m2 = T.model_from_checkpoint(p)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))

# --- the loop --------------------------------------------------------------------------------------------------------

def params_of(path): return T.read_checkpoint(path)['model']

def test_resume_is_bitwise_exact(cfg, tmp_path):
    "Interrupted twice (mid-epoch, and in the next epoch after an epoch-end evaluation) and resumed: same bits."
    base = cfg.replace(max_steps=15, lim_dropout=0.1)                    # crosses the epoch end at step 12; dropout on
    ref = T.train(base.replace(out_dir=tmp_path/'ref'), progress=False, final_extra=False)
    run = base.replace(out_dir=tmp_path/'cut')
    assert T.train(run, progress=False, stop_after=5)['stopped_at'] == 5
    assert T.train(run, resume=tmp_path/'cut'/'last.pt', progress=False, stop_after=13)['stopped_at'] == 13
    res = T.train(run, resume=tmp_path/'cut'/'last.pt', progress=False, final_extra=False)
    a, b = params_of(tmp_path/'ref'/'last.pt'), params_of(tmp_path/'cut'/'last.pt')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res['final']['metrics'] == ref['final']['metrics'] and res['steps'] == 15
    steps = lambda p: [r['step'] for r in T.read_log(p) if r['kind'] == 'step']
    assert steps(tmp_path/'cut'/'log.jsonl') == steps(tmp_path/'ref'/'log.jsonl') == list(range(1, 16))
    la = [r['loss'] for r in T.read_log(tmp_path/'ref'/'log.jsonl') if r['kind'] == 'step']
    lb = [r['loss'] for r in T.read_log(tmp_path/'cut'/'log.jsonl') if r['kind'] == 'step']
    assert la == lb

def test_run_folder_and_best_vs_final(cfg):
    s = T.train(cfg.replace(max_steps=4, eval_every=2), progress=False, final_extra=True)
    out = cfg.out_dir
    assert {p.name for p in out.iterdir()} >= {'last.pt', 'best.pt', 'log.jsonl', 'summary.json', 'training.png'}
    evals = [r for r in T.read_log(out/'log.jsonl') if r['kind'] == 'eval']
    assert [r['step'] for r in evals] == [2, 4]                           # every 2 steps, the end not twice
    assert s['best']['t2v_R1'] == max(r['t2v_R1'] for r in evals) and 'selected on test' in s['best']['note']
    assert set(s['final']['metrics']) == {'plain', 'DSL', 'QB-Norm'}
    assert json.loads((out/'summary.json').read_text())['steps'] == 4
    lrs = [r['lr'] for r in T.read_log(out/'log.jsonl') if r['kind'] == 'step']
    assert lrs[0] == 0.0 and lrs[1] > 0                                  # the released schedule starts at lr 0

def test_logit_scale_clamped_after_the_step(cfg):
    m = GLSCL(cfg)
    with torch.no_grad(): m.clip.logit_scale.fill_(math.log(100) + 0.5)
    T.train(cfg.replace(max_steps=1), model=m, progress=False, final_extra=False)
    assert m.clip.logit_scale.item() <= math.log(100) + 1e-6

class NaNAt(GLSCL):
    "A GLSCL whose loss turns NaN at the `bad`-th forward in training mode."
    bad = 3
    def forward(self, batch, gather=None):
        out = super().forward(batch, gather)
        self.calls = getattr(self, 'calls', 0) + 1
        if self.calls == self.bad: out = dict(out, loss=out['loss'] * float('nan'))
        return out

def test_nan_loss_stops_and_keeps_the_last_checkpoint(cfg):
    m = NaNAt(cfg)
    with pytest.raises(T.NonFiniteLoss, match=r"step 3: the loss is nan \(nce=.*icl=.*idl="):     # the log's numbering
        T.train(cfg.replace(max_steps=6), model=m, progress=False, ckpt_every=1)
    ck = T.read_checkpoint(cfg.out_dir/'last.pt')
    assert ck['state']['step'] == 2 and [r['step'] for r in T.read_log(cfg.out_dir/'log.jsonl')] == [1, 2]
    assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())

def test_unreadable_videos_skipped_then_stop(cfg, world, tmp_path, caplog):
    w = copy_world(world, tmp_path/'w')
    (w/'videos'/'video0.mp4').write_bytes(b'not a video')
    c = cfg.replace(anno_dir=w, video_dir=w/'videos', max_steps=12, max_skip_frac=0.1)   # 20 train videos: 2 allowed
    with caplog.at_level(logging.WARNING):
        s = T.train(c, progress=False, final_extra=False)
    assert s['skipped_videos'] == ['video0'] and 'video0.mp4' in caplog.text
    for v in ('video1', 'video2'): (w/'videos'/f'{v}.mp4').write_bytes(b'')
    with pytest.raises(RuntimeError, match=r"3 of 20 training videos cannot be read .*video0\.mp4"):
        T.train(c.replace(out_dir=tmp_path/'r2'), progress=False)

# --- evaluation ------------------------------------------------------------------------------------------------------

def test_evaluate_matches_a_plain_reference(cfg):
    "evaluate == encode each item by hand, S by the model, metrics of notebook 08."
    m = GLSCL(cfg).eval()
    r = T.evaluate(m, cfg, progress=False)
    caps, vids, cv = T.split_items(cfg, 'test')
    from glscl.data import tokenize, load_video
    with torch.no_grad():
        t = m.encode_text(*tokenize(caps, cfg.max_words))
        fr = [load_video(cfg.video_dir/f'{v}.mp4', cfg.max_frames, cfg.fps, cfg.image_size) for v in vids]
        v = m.encode_video(torch.stack([f for f, _ in fr]), torch.stack([k for _, k in fr]))
        S = m.similarity(t, v)
    assert torch.allclose(r['sim'], S, atol=1e-5)
    assert r['metrics']['plain'] == retrieval_metrics(r['sim'], torch.tensor(cv))

def test_evaluation_cache_hit_miss_stale_foreign(cfg, world, tmp_path, caplog):
    w = copy_world(world, tmp_path/'w')
    c = cfg.replace(anno_dir=w, video_dir=w/'videos')
    m = GLSCL(c).eval()
    cache = tmp_path/'cache'
    a = T.evaluate(m, c, cache_dir=cache, progress=False)
    b = T.evaluate(m, c, cache_dir=cache, progress=False)
    assert (a['cached'], b['cached']) == (False, True) and torch.equal(a['sim'], b['sim'])
    with torch.no_grad(): m.lim.queries.mul_(1.5)                          # other weights: a miss
    assert not T.evaluate(m, c, cache_dir=cache, progress=False)['cached']
    assert T.evaluate(m, c, cache_dir=cache, progress=False)['cached']
    vid = T.split_items(c, 'test')[1][0]                                   # other data: a miss
    os.utime(w/'videos'/f'{vid}.mp4', ns=(1, 1))
    assert not T.evaluate(m, c, cache_dir=cache, progress=False)['cached']
    assert not T.evaluate(m, c.replace(max_frames=6), cache_dir=cache, progress=False)['cached']   # other settings
    key, parts = T.encoding_key(m, c, 'test')                              # a foreign file under this key: rebuilt
    path = cache/f'enc-test-{key}.pt'
    blob = torch.load(path, weights_only=False)
    blob['parts'] = dict(blob['parts'], model='somebody else'); blob['enc']['text']['eos'] += 1
    torch.save(blob, path)
    with caplog.at_level(logging.WARNING):
        r = T.evaluate(m, c, cache_dir=cache, progress=False)
    assert not r['cached'] and 'does not match its key' in caplog.text
    assert torch.load(path, weights_only=False)['parts'] == parts
    path.write_bytes(b'garbage')                                           # an unreadable file: rebuilt
    assert not T.evaluate(m, c, cache_dir=cache, progress=False)['cached']

def test_evaluation_refuses_missing_test_videos(cfg, world, tmp_path):
    w = copy_world(world, tmp_path/'w')
    vid = T.split_items(cfg, 'test')[1][1]
    (w/'videos'/f'{vid}.mp4').unlink()
    with pytest.raises(ValueError, match='evaluation needs every video'):
        T.evaluate(GLSCL(cfg), cfg.replace(anno_dir=w, video_dir=w/'videos'), progress=False)

def test_model_from_checkpoint_keeps_quick_gelu(cfg, tmp_path):
    "QuickGELU is not in the weights: the checkpoint records it, and the rebuilt model encodes the same."
    from glscl.clip import load_clip; import glscl.tinyclip  # noqa: F401  (registers glscl-tiny)
    m = GLSCL(cfg, encoder=load_clip('glscl-tiny', None, quick_gelu=True)).eval()
    assert T.uses_quick_gelu(m) and not T.uses_quick_gelu(GLSCL(cfg))
    p = T.save_checkpoint(tmp_path/'q.pt', m)
    m2 = T.model_from_checkpoint(p)
    assert T.uses_quick_gelu(m2)
    ids = torch.randint(1, 49000, (3, 8)); ids[:, -1] = 49407
    with torch.no_grad(): assert torch.equal(m.encode_text(ids, ids > 0)['eos'], m2.encode_text(ids, ids > 0)['eos'])

def test_resume_refuses_another_run(cfg):
    T.train(cfg.replace(max_steps=2, eval_every=1), progress=False, final_extra=False)
    with pytest.raises(ValueError, match=r"no optimizer state .*last\.pt"):
        T.train(cfg, resume=cfg.out_dir/'best.pt', progress=False)
    with pytest.raises(ValueError, match=r"other settings: lr=0\.001 \(now 0\.0001\)"):
        T.train(cfg.replace(lr=1e-4), resume=cfg.out_dir/'last.pt', progress=False)
    with pytest.raises(ValueError, match='batch_size=1'): T.train(cfg.replace(batch_size=1), progress=False)

def test_log_with_a_cut_last_line(tmp_path):
    p = tmp_path/'log.jsonl'
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert T.read_log(p) == [{'step': 1}, {'step': 2}]
    T.RunLog(p, resume_step=1)
    assert T.read_log(p) == [{'step': 1}]
    p.write_text('{"step": 1}\nxx\n{"step": 3}\n')
    with pytest.raises(ValueError, match='line 2'): T.read_log(p)

def test_cache_key_changes_with_the_code_version(cfg, monkeypatch):
    import glscl
    m = GLSCL(cfg)
    k1, _ = T.encoding_key(m, cfg, 'test')
    monkeypatch.setattr(glscl, '__version__', glscl.__version__ + '.post1')
    assert T.encoding_key(m, cfg, 'test')[0] != k1

def test_a_new_setting_that_affects_encodings_changes_the_cache_key(cfg):
    """A setting added in one line of Config (a subclass here) is in the cache key and the resume check: no list to
    update."""
    from dataclasses import dataclass
    from glscl.config import Config, setting
    @dataclass(frozen=True)
    class Wider(Config):
        new_knob: int = setting(0, affects='training encodings', range='[0, 4]')
    a, m = Wider(**cfg.to_dict()), GLSCL(cfg)
    b = a.replace(new_knob=1)
    (ka, pa), (kb, pb) = T.encoding_key(m, a, 'test'), T.encoding_key(m, b, 'test')
    assert ka != kb and (pa['settings']['new_knob'], pb['settings']['new_knob']) == ('0', '1')
    assert T.encoding_key(m, a.replace(new_knob=0), 'test')[0] == ka
    ckpt = dict(optimizer={}, config=T._plain(a.to_dict()))
    T.check_resume(ckpt, a.replace(max_steps=3), 'last.pt')                # a key declared free of training may change
    with pytest.raises(ValueError, match=r"other settings: new_knob=0 \(now 1\)"): T.check_resume(ckpt, b, 'last.pt')

# --- precision --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('precision', ['amp-bf16', 'released-fp16'])
def test_precision_train_step_on_cpu(cfg, precision):
    """bf16 autocast and the released half CLIP both train on the CPU: finite loss close to fp32's, weights move, dtypes
    kept."""
    c = cfg.replace(precision=precision, freeze_visual=False, lim_dropout=0.0, max_frames=3,
                    optimizer='bertadam' if precision == 'released-fp16' else 'adamw')
    torch.manual_seed(0); ref = GLSCL(c.replace(precision='fp32'))
    torch.manual_seed(0); m = GLSCL(c)
    m.load_state_dict(ref.state_dict())
    ds = T.dataset_from_config(c, 'train')
    batch = T.collate_videos([ds[i * 10] for i in range(4)])   # 4 videos x 3 frames: CPU bf16 / fp16 kernels are slow
    with torch.no_grad(), T.autocast(c, 'cpu'): lo = m(batch)['loss'].item()
    with torch.no_grad(): lr_ = ref(batch)['loss'].item()
    assert abs(lo - lr_) < 0.05 * abs(lr_), (lo, lr_)
    dtypes = {n: p.dtype for n, p in m.named_parameters()}
    opt = T.make_optimizer(m, c); sched = T.make_scheduler(opt, c.replace(warmup=0.0), 10)   # no warmup: step 0 moves
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    rec = T.train_step(m, batch, opt, sched, c.replace(warmup=0.0), 0)
    assert math.isfinite(rec['loss']) and math.isfinite(rec['grad_norm'])
    assert {n: p.dtype for n, p in m.named_parameters()} == dtypes
    assert not torch.equal(before['lim.queries'], m.lim.queries.detach())
    if precision == 'released-fp16':
        assert dtypes['clip.model.transformer.resblocks.0.mlp.c_fc.weight'] == torch.float16
        st = opt.state[m.clip.model.transformer.resblocks[0].mlp.c_fc.weight]
        assert st['exp_avg'].dtype == torch.float16
    else: assert set(dtypes.values()) == {torch.float32}

def test_amp_fp16_step_with_a_scaler(cfg):
    """amp-fp16: the loss is scaled for the backward, gradients unscaled before the clip, the step taken; an overflow
    skips it."""
    c = cfg.replace(precision='amp-fp16', lim_dropout=0.0, max_frames=3, warmup=0.0)
    s = T.make_scaler(c, 'cpu')
    assert isinstance(s, torch.amp.GradScaler) and T.make_scaler(cfg, 'cpu') is None
    torch.manual_seed(0); m = GLSCL(c)
    ds = T.dataset_from_config(c, 'train')
    batch = T.with_features(T.collate_videos([ds[i * 10] for i in range(4)]),
                            T.frame_features(m, ds, c, progress=False), ds)
    opt = T.make_optimizer(m, c); sched = T.make_scheduler(opt, c, 10)
    q0 = m.lim.queries.detach().clone()
    for step in range(30):   # the first scale (65536) overflows fp16: those steps are skipped, the scale halves
        scale = s.get_scale()
        rec = T.train_step(m, batch, opt, sched, c, step, scaler=s)
        if 'skipped' not in rec: break
        assert s.get_scale() == scale / 2 and torch.equal(q0, m.lim.queries.detach())
    # unscaled before the clip
    assert 'skipped' not in rec and math.isfinite(rec['grad_norm']) and rec['grad_norm'] < 1e3
    assert not torch.equal(q0, m.lim.queries.detach())
    # an inf gradient: the scaler skips the update and halves its scale, no NonFiniteLoss
    scale = s.get_scale(); q1 = m.lim.queries.detach().clone()
    m.lim.queries.register_hook(lambda g: g * float('inf'))
    rec = T.train_step(m, batch, opt, sched, c, step + 1, scaler=s)
    assert rec.get('skipped') and s.get_scale() < scale and torch.equal(q1, m.lim.queries.detach())

# --- DDP: 2 CPU processes (gloo) against one process on the same global batch -----------------------------------------

def _ddp_cfg():
    """A random tiny CLIP; the image tower frozen (its backward is most of a CPU step), the text tower, TT and LIM
    trained."""
    return load_config('toy', clip_pretrained='none', lim_dropout=0.0, max_frames=4)

def _ddp_batch(B=8, N=4, L=12, S=64):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 49000, (B, L), generator=g); mask = torch.zeros(B, L, dtype=torch.bool)
    fm = torch.zeros(B, N, dtype=torch.bool)
    for i in range(B):
        n = 3 + (5 * i) % (L - 3); ids[i, 0] = 49406; ids[i, n - 1] = 49407; ids[i, n:] = 0; mask[i, :n] = True
        fm[i, :1 + (3 * i) % N] = True
    return dict(ids=ids, mask=mask,
                frames=torch.randn(B, N, 3, S, S, generator=g) * fm[..., None, None, None], frame_mask=fm)

def _grads(cfg, gather=None, rows=slice(None), wrap=None):
    torch.manual_seed(0)
    m = GLSCL(cfg)
    b = {k: v[rows] for k, v in _ddp_batch().items()}
    f = wrap(m) if wrap else m
    out = f(b, gather=gather)
    out['loss'].backward()
    return {k: v.item() for k, v in out.items()}, {n: p.grad.clone() for n, p in m.named_parameters()
                                                   if p.grad is not None}

def _ddp_worker(rank, world_size, rdv, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{rdv}', rank=rank, world_size=world_size)
    try:
        for mode in ('exact', 'released'):
            cfg = _ddp_cfg().replace(ddp_gather=mode)
            b = 8 // world_size
            wrap = lambda m: torch.nn.parallel.DistributedDataParallel(m)
            parts, grads = _grads(cfg, T.make_gather(cfg), slice(rank * b, (rank + 1) * b), wrap)
            torch.save(dict(loss=parts['loss'], parts=parts, grads=grads), f'{out_dir}/{mode}{rank}.pt')
            # gradient caching: each rank encodes its 4 pairs in chunks of 3 (not a divisor), float64, under DDP as
            # `train` runs it
            parts, grads = _gc_grads(_gc_ddp_cfg(mode, grad_cache_chunk=3), slice(rank * b, (rank + 1) * b), world_size)
            torch.save(dict(parts=parts, grads=grads), f'{out_dir}/gc-{mode}{rank}.pt')
    finally: dist.destroy_process_group()

@pytest.fixture(scope='module')
def ddp_runs(tmp_path_factory):
    "Both gather modes, each rank's loss and gradients, from one spawn of 2 gloo processes."
    import torch.multiprocessing as mp
    d = tmp_path_factory.mktemp('ddp')
    mp.spawn(_ddp_worker, args=(2, str(d/'rdv'), str(d)), nprocs=2, join=True)
    return {m: [torch.load(d/f'{m}{r}.pt') for r in range(2)] for m in ('exact', 'released', 'gc-exact', 'gc-released')}

@pytest.fixture(scope='module')
def one_process():
    return _grads(_ddp_cfg())

def test_ddp_exact_gather_matches_one_process(ddp_runs, one_process):
    """2 processes x 4 pairs, gradient-carrying gather + DDP: the same loss on both ranks and the same gradients as 1 x
    8."""
    ranks = ddp_runs['exact']
    parts, grads = one_process
    # part by part, relative: IDL (~1e-5) and ICL (~1e-2) vanish inside any tolerance on the total loss (~1.6)
    for r in ranks:
        for k in ('loss', 'nce', 'icl', 'idl'):
            assert parts[k] > 0 and r['parts'][k] == pytest.approx(parts[k], rel=1e-5, abs=0), k
    g2 = ranks[0]['grads']
    assert set(g2) == set(grads) and len(grads) > 50
    for n in grads:
        assert torch.allclose(g2[n], grads[n], rtol=1e-3, atol=1e-6), (n, (g2[n] - grads[n]).abs().max())
        assert torch.equal(g2[n], ranks[1]['grads'][n]), n                         # DDP leaves every rank the same

def test_ddp_released_gather_scales_encoders_by_one_over_w(ddp_runs, one_process):
    "The released gather returns only the local slice: encoder gradients are 1/W, LIM and the logit scale keep theirs."
    ranks = ddp_runs['released']
    parts, grads = one_process
    for k in ('loss', 'nce', 'icl', 'idl'):
        assert parts[k] > 0 and ranks[0]['parts'][k] == pytest.approx(parts[k], rel=1e-5, abs=0), k
    g2 = ranks[0]['grads']
    full = [n for n in grads if n.startswith('lim.') or n == 'clip.model.logit_scale']
    assert len(full) > 10
    for n in grads:
        want = grads[n] if n in full else grads[n] / 2
        assert torch.allclose(g2[n], want, rtol=1e-3, atol=1e-6), (n, (g2[n] - want).abs().max())

# --- gradient caching: CLIP's towers in chunks, everything else on the whole batch ------------------------------------

def _gc_ddp_cfg(mode='exact', **kw):
    """The DDP tests' toy model with the image tower trained too (gradient caching re-encodes it), no dropout (ranks
    draw apart)."""
    return _ddp_cfg().replace(ddp_gather=mode, freeze_visual=False, **kw)

def _gc_grads(cfg, rows=slice(None), world_size=1):
    """Loss parts and gradients of `T.forward_backward` on rows of `_ddp_batch`, the model in float64 (DDP-wrapped with
    2 processes)."""
    torch.manual_seed(0)
    m = GLSCL(cfg).double().train()
    ddp = torch.nn.parallel.DistributedDataParallel(m) if world_size > 1 else None
    b = {k: v[rows] for k, v in _ddp_batch().items()}
    out = T.forward_backward(m, b, cfg, gather=T.make_gather(cfg), forward=ddp)
    return {k: v.item() for k, v in out.items()}, {n: p.grad.clone() for n, p in m.named_parameters()
                                                   if p.grad is not None}

def assert_same_grads(got: dict, want: dict, rel: float = 1e-13):
    """Every parameter's gradient equal up to float64 rounding: each entry within `rel` of itself, or of its tensor's
    largest entry (entries that cancel to nearly 0 carry rounding of the tensor's size, never more)."""
    assert set(got) == set(want) and len(want) > 20
    for n, w in want.items():
        assert w.dtype == torch.float64 and w.abs().max() > 0, n
        torch.testing.assert_close(got[n], w, rtol=rel, atol=rel * float(w.abs().max()), msg=lambda m, n=n: f"{n}: {m}")

GC_LAYOUTS = {    # the corrected recipe's layout (image tower trained), the toy run's (stored features of a frozen
                  # image tower), and the released recipe's (compat padding through CLIP, pads hidden in the text tower,
                  # conv1 frozen)
    'plain': ('toy', dict(freeze_visual=False)),
    'frozen': ('toy', dict(freeze_visual=True)),
    'released': ('msrvtt-vitb32', dict(clip_model='glscl-tiny', image_size=64, precision='fp32', augment='none',
                                       lim_heads=4, lim_ff_dim=512)),
}

def _gc_cfg(layout: str, **kw):
    preset, own = GC_LAYOUTS[layout]
    # LIM's dropout on
    return load_config(preset, **{'clip_pretrained': 'none', 'lim_dropout': 0.1, 'max_frames': 4, **own, **kw})

def _gc_step(cfg, seed: int = 1, model=None):
    """One float64 `forward_backward` of the fixed batch under `cfg` (dropout drawn from `seed`): (parts, grads, rng
    after, model)."""
    torch.manual_seed(0)
    m = model if model is not None else GLSCL(cfg).double().train()
    b = _ddp_batch()
    if cfg.freeze_visual:   # the toy run's way: the frozen tower's features, computed once
        with torch.no_grad(): b = dict(b, frame_features=m.clip.encode_frames(b['frames'].double(), b['frame_mask']))
    torch.manual_seed(seed)
    out = T.forward_backward(m, b, cfg)
    return ({k: v.item() for k, v in out.items()},
            {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, torch.get_rng_state(), m)

_GC_PLAIN = {}
def _gc_plain(layout):
    if layout not in _GC_PLAIN: _GC_PLAIN[layout] = _gc_step(_gc_cfg(layout))
    return _GC_PLAIN[layout]

@pytest.mark.parametrize('layout', list(GC_LAYOUTS))
@pytest.mark.parametrize('chunk', [1, 3, 5, 8])
def test_grad_cache_equals_the_whole_batch(layout, chunk):
    """Chunks of 1, 3, 5 (neither divides the batch of 8) and 8 pairs: the loss parts and every parameter's gradient
    equal the plain step's (float64, LIM's dropout on), and the random stream continues as after the plain step."""
    parts, grads, rng, m = _gc_plain(layout)
    got, ggot, rgot, _ = _gc_step(_gc_cfg(layout, grad_cache_chunk=chunk))
    for k in ('loss', 'nce', 'icl', 'idl'):
        assert parts[k] > 0 and got[k] == pytest.approx(parts[k], rel=1e-12, abs=0), k
    assert_same_grads(ggot, grads)
    assert torch.equal(rgot, rng)
    visual = any(n.startswith('clip.model.visual.') for n in grads)
    assert visual == (layout != 'frozen') and any(n.startswith('clip.model.transformer.') for n in grads)
    if layout == 'released': assert 'clip.model.visual.conv1.weight' not in grads        # frozen, as released

@pytest.mark.parametrize('chunk', [0, 3])
def test_grad_checkpointing_keeps_the_gradients(chunk):
    "open_clip's gradient checkpointing, alone and with chunks of 3: the plain step's loss and gradients (float64)."
    parts, grads, rng, _ = _gc_plain('plain')
    cfg = _gc_cfg('plain', grad_cache_chunk=chunk, grad_checkpointing=True)
    got, ggot, rgot, m = _gc_step(cfg)
    assert m.clip.model.transformer.grad_checkpointing and m.clip.model.visual.transformer.grad_checkpointing
    assert got['loss'] == pytest.approx(parts['loss'], rel=1e-12, abs=0)
    assert_same_grads(ggot, grads)
    assert torch.equal(rgot, rng)

def _tower_dropout(m, p=0.2):
    """Attention dropout inside every block of both CLIP towers (open_clip's CLIP has none): the towers draw random
    numbers."""
    for blk in list(m.clip.model.transformer.resblocks) + list(m.clip.model.visual.transformer.resblocks):
        blk.attn.dropout = p
    return m

def _chunked_reference(m, cfg, b, chunk: int, seed: int = 1):
    """Slow and obvious: each chunk through the towers with its graph kept, in the cached step's order; the rest on the
    whole batch."""
    torch.manual_seed(seed); m.zero_grad(set_to_none=True)
    rows = T.row_chunks(len(b['ids']), chunk)
    text = [m.text_tower(b['ids'][s], b['mask'][s]) for s in rows]
    video = [m.frame_tower(b['frames'][s], b['frame_mask'][s]) for s in rows]
    cat = lambda parts: {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    out = m(b, towers=dict(text=cat(text), video=cat(video)))
    out['loss'].backward()
    return out['loss'].item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

def test_grad_cache_replays_the_towers_random_state(monkeypatch):
    """With dropout inside the towers, the cached step's gradients are those of a graph through the same chunks, because
    each chunk's second pass replays its random state; without the replay they are not."""
    cfg = _gc_cfg('plain', grad_cache_chunk=3)
    torch.manual_seed(0)
    m = _tower_dropout(GLSCL(cfg).double().train())
    b = _ddp_batch()
    loss, grads = _chunked_reference(m, cfg, b, 3)
    got, ggot, _, _ = _gc_step(cfg, model=m)
    assert got['loss'] == pytest.approx(loss, rel=1e-12, abs=0)
    assert_same_grads(ggot, grads)
    torch.manual_seed(2); a = m.text_tower(b['ids'][:3], b['mask'][:3])['eos']
    assert not torch.equal(a, m.text_tower(b['ids'][:3], b['mask'][:3])['eos'])     # the towers do draw
    # no replay: other masks in the second pass
    monkeypatch.setattr(glscl.step, 'set_torch_rng', lambda state, device: None)
    _, gbad, _, _ = _gc_step(cfg, model=m)
    assert not torch.allclose(gbad['clip.model.transformer.resblocks.0.mlp.c_fc.weight'],
                              grads['clip.model.transformer.resblocks.0.mlp.c_fc.weight'], rtol=1e-6)

@pytest.mark.parametrize('precision', ['amp-bf16', 'amp-fp16', 'released-fp16'])
def test_grad_cache_in_every_precision(precision):
    """The 16-bit modes, amp-fp16 with a GradScaler (whose scale must reach the towers' gradients too): the cached
    step's loss is the plain step's and its gradient differs from the plain step's by less than half of what the mode's
    own rounding moves the plain step away from fp32 (measured: about a seventh). Float64 above is where they are
    equal."""
    base = _gc_cfg('plain', precision=precision, lim_dropout=0.0, max_frames=3)
    b = {k: v[:6, :3] if k in ('frames', 'frame_mask') else v[:6] for k, v in _ddp_batch().items()}
    runs = {}
    for name, cfg in (('fp32', base.replace(precision='fp32')), ('plain', base),
                      ('cached', base.replace(grad_cache_chunk=4))):
        torch.manual_seed(0); m = GLSCL(cfg).train()
        scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10) if cfg.precision == 'amp-fp16' else None
        out = T.forward_backward(m, b, cfg, scaler=scaler)
        s = scaler.get_scale() if scaler else 1.0                      # the gradients come scaled: unscale to compare
        runs[name] = out['loss'].item(), {n: p.grad.double() / s for n, p in m.named_parameters() if p.grad is not None}
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])
    (l32, g32), (l0, g0), (lc, gc) = runs['fp32'], runs['plain'], runs['cached']
    assert set(gc) == set(g0) == set(g32) and any(n.startswith('clip.model.visual.') for n in g0)
    assert all(torch.isfinite(v).all() for v in gc.values())
    assert lc == pytest.approx(l0, rel=1e-6) and l0 == pytest.approx(l32, rel=1e-2)
    mode = (flat(g0) - flat(g32)).norm() / flat(g32).norm()
    assert 0 < mode < 0.05                                              # the 16-bit mode's own rounding
    assert (flat(gc) - flat(g0)).norm() / flat(g0).norm() < 0.5 * mode

def test_grad_cache_settings_and_errors():
    from glscl.config import SettingError
    with pytest.raises(SettingError, match=r'grad_cache_chunk = -1: must be in \[0, inf\)'):
        load_config('toy', grad_cache_chunk=-1)
    with pytest.raises(SettingError, match='grad_cache_chunk'): load_config('toy', grad_cache_chunk='2.5')
    torch.manual_seed(0)
    m = GLSCL(_gc_cfg('plain'))
    with pytest.raises(ValueError, match='grad_cache_chunk = 0: use a positive number'): T.GradCache(m, 0)
    m.clip.model.visual.bn = torch.nn.BatchNorm1d(4)                  # as in the ResNet CLIPs' image towers
    with pytest.raises(ValueError,
                       match=r'grad_cache_chunk = 2 with CLIP glscl-tiny: its BatchNorm layers \(model.visual.bn'):
        T.GradCache(m, 2)
    # memory and time only: a run may resume with another chunk; the evaluation cache does not depend on it
    assert {'grad_cache_chunk', 'grad_checkpointing'} <= set(T.RESUME_FREE_KEYS)
    assert not {'grad_cache_chunk', 'grad_checkpointing'} & set(T.ENCODING_KEYS)
    # the one-GPU presets: their base recipe, batch 128, gradient caching on and nothing else changed
    for one, base in (('msrvtt-vitb32-1gpu', 'msrvtt-vitb32-amp'), ('msrvtt-vitb32-released-1gpu', 'msrvtt-vitb32')):
        a, b = load_config(one).to_dict(), load_config(base).to_dict()
        assert {k for k in a if a[k] != b[k]} - {'name', 'description', 'out_dir'} == {'grad_cache_chunk'}, one
        assert (a['grad_cache_chunk'], a['batch_size'], a['grad_checkpointing']) == (32, 128, False)
    assert load_config('msrvtt-vitb32').grad_cache_chunk == 0 and load_config('toy').grad_cache_chunk == 0

def test_ddp_grad_cache_matches_one_process_without(ddp_runs):
    """2 processes x 4 pairs, each in chunks of 3, under DDP (the cached step averages after its last backward): the
    loss and every gradient of one process holding all 8 pairs without chunks (float64); the released gather's 1/W as
    well."""
    for mode in ('exact', 'released'):
        parts, grads = _gc_grads(_gc_ddp_cfg(mode))
        ranks = ddp_runs[f'gc-{mode}']
        for r in ranks:
            for k in ('loss', 'nce', 'icl', 'idl'):
                assert parts[k] > 0 and r['parts'][k] == pytest.approx(parts[k], rel=1e-12, abs=0), k
        full = {n for n in grads if n.startswith('lim.') or n == 'clip.model.logit_scale'}
        want = grads if mode == 'exact' else {n: g if n in full else g / 2 for n, g in grads.items()}
        assert any(n.startswith('clip.model.visual.') for n in grads)
        assert_same_grads(ranks[0]['grads'], want)
        for n in grads: assert torch.equal(ranks[0]['grads'][n], ranks[1]['grads'][n]), n     # every rank the same

def test_train_with_grad_cache_and_a_chunk_that_saves_nothing(cfg, caplog):
    """`train` takes cached steps; a chunk not below each process's share of the batch is pointed out (it only costs
    time)."""
    with caplog.at_level(logging.WARNING, logger='glscl.train'):
        r = T.train(cfg.replace(grad_cache_chunk=16), progress=False, stop_after=1)
    assert r['stopped_at'] == 1
    assert 'grad_cache_chunk=16 is not below the 16 pairs each process encodes' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='glscl.train'):
        T.train(cfg.replace(grad_cache_chunk=5), progress=False, stop_after=1)
    assert 'grad_cache_chunk' not in caplog.text

# --- the loop's cheap paths give the same numbers -------------------------------------------------------------------

def test_weights_finite_against_a_check_of_every_element():
    "The fused-norm check equals `isfinite` over every element, including weights whose norm overflows."
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        ts = [torch.randn(*torch.randint(1, 6, (2,), generator=g).tolist(), generator=g)
              * 10.0 ** float(torch.randint(0, 35, (1,), generator=g))
              for _ in range(3)]
        if trial % 3:
            t = ts[trial % len(ts)]
            t.view(-1)[trial % t.numel()] = (float('nan'), float('inf'), -float('inf'))[trial % 3]
        slow = all(math.isfinite(x) for t in ts for x in t.flatten().tolist())
        assert T.weights_finite(ts) == slow, trial
    assert T.weights_finite([torch.full((8,), 3e38)]) and T.weights_finite([])

def test_training_on_features_reads_no_pixels_and_changes_nothing(cfg):
    """With a frozen image tower the loop's items carry no pixels (frames [n, 0]) and their tokens come from the memo:
    the loss and every gradient equal those of items with pixels and freshly tokenized captions."""
    m = GLSCL(cfg)
    ds = T.dataset_from_config(cfg, cfg.train_split, uint8=True)
    feats = T.frame_features(m, ds, cfg, progress=False)
    def step(pixels, memo):
        # configured by its constructor
        d = T.dataset_from_config(cfg, cfg.train_split, uint8=True, pixels=pixels, memo=memo)
        items = [d[i * 7] for i in range(6)]
        if not pixels: assert all(it['frames'].shape == (it['frame_mask'].sum(), 0) for it in items)
        torch.manual_seed(5); m.zero_grad(set_to_none=True)
        out = m(T.with_features(T.collate_videos(items), feats, d)); out['loss'].backward()
        return out['loss'].item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    memo = {}
    ref, with_memo = step(True, None), step(False, memo)
    # the second read: tokens from the memo
    assert any(k[0] == 'tokens' for k in memo) and step(False, memo)[0] == ref[0]
    assert with_memo[0] == ref[0] and with_memo[1].keys() == ref[1].keys()
    for n, gr in ref[1].items(): assert torch.equal(gr, with_memo[1][n]), n
