"""The other four benchmarks (issue 10): each reader on small files in the exact formats (with blank lines, unicode,
a missing video, an empty caption list), the video lookup of each naming, multi-sentence and paragraph evaluation on a
hand-made similarity matrix, the presets, and one toy training step per preset in its own layout."""
import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from glscl.config import load_config
from glscl.data import VideoLookup, VideoTextDataset, collate_videos
from glscl.datasets import (read_msvd, read_didemo, read_lsmdc, read_activitynet, paragraph, BENCHMARKS, PAPER_T2V,
                            video_lookup, annotation_files)
from glscl.metrics import retrieval_metrics
from glscl.toyworld import make_toy_msrvtt
from glscl.toylayouts import write_toy_layout, LAYOUTS
from glscl.presetdata import dataset_from_config

# --- MSVD -------------------------------------------------------------------------------------------------------------

def msvd_files(d: Path, caps: dict, lists: dict):
    d.mkdir(parents=True, exist_ok=True)
    for s, ids in lists.items(): (d/f'{s}_list.txt').write_text(ids, encoding='utf-8')
    with open(d/'raw-captions.pkl', 'wb') as f: pickle.dump(caps, f)
    return d

def test_read_msvd(tmp_path):
    caps = {'-4wsuPCjDBc_5_15': [['a', 'man', 'sings'], ['someone', 'is', 'singing']],
            'zzit5b_-ukg_5_20': [['un', 'café', 'chaud']]}
    d = msvd_files(tmp_path/'a', caps,
                   dict(train='\n-4wsuPCjDBc_5_15\n\n', test='zzit5b_-ukg_5_20\r\n-4wsuPCjDBc_5_15\n'))
    assert read_msvd(d, 'train') == [('-4wsuPCjDBc_5_15', 'a man sings'), ('-4wsuPCjDBc_5_15', 'someone is singing')]
    assert read_msvd(d, 'test') == [('zzit5b_-ukg_5_20', 'un café chaud'), ('-4wsuPCjDBc_5_15', 'a man sings'),
                                    ('-4wsuPCjDBc_5_15', 'someone is singing')]
    with pytest.raises(ValueError, match='valid splits'): read_msvd(d, 'dev')
    with pytest.raises(FileNotFoundError, match='val_list.txt'): read_msvd(d, 'val')

@pytest.mark.parametrize('caps,lst,words', [({'a': []}, 'a\n', "caption list of video 'a' is empty"),
                                            ({'a': [['x']]}, 'a\nb\n', "video 'b' of test_list.txt has no captions"),
                                            ({'a': [['&nbsp;']]}, 'a\n', 'empty after cleaning'),
                                            ({'a': [[1, 2]]}, 'a\n', 'list of tokens'),
                                            ({'a': [['x']]}, 'a\na\n', "line 2: video id 'a' repeats line 1")])
def test_msvd_odd_cases(tmp_path, caps, lst, words):
    d = msvd_files(tmp_path/'a', caps, dict(test=lst))
    with pytest.raises(ValueError, match=words): read_msvd(d, 'test')

def test_msvd_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self): return (print, ('pwned',))
    d = msvd_files(tmp_path/'a', {}, dict(test='a\n'))
    with open(d/'raw-captions.pkl', 'wb') as f: pickle.dump({'a': Evil()}, f)
    with pytest.raises(ValueError, match='builtins.print'): read_msvd(d, 'test')

# --- DiDeMo -----------------------------------------------------------------------------------------------------------

def test_read_didemo_paragraph_in_time_order(tmp_path):
    d = tmp_path/'a'; d.mkdir()
    (d/'test_list.txt').write_text('v1.mov\n\nv2.mp4\n')
    recs = [dict(video='v1.mov', times=[[3, 4], [2, 4], [3, 3], [3, 4]], description='the dog sits'),
            dict(video='v2.mp4', times=[[0, 0]] * 4, description='ünïcode wörds'),
            dict(video='v1.mov', times=[[0, 1], [0, 0], [1, 1], [0, 1]], description='a dog runs in'),
            # ties with 'sits' (start 2): file order
            dict(video='v1.mov', times=[[2, 2], [2, 3], [2, 2], [2, 2]], description='it barks'),
            dict(video='other', times=[[0, 0]], description='not listed')]
    (d/'test_data.json').write_text(json.dumps(recs))
    assert read_didemo(d, 'test') == [('v1.mov', 'a dog runs in the dog sits it barks'), ('v2.mp4', 'ünïcode wörds')]
    (d/'test_list.txt').write_text('v1.mov\nv3.mov\n')
    with pytest.raises(ValueError, match="video 'v3.mov' of test_list.txt has no description"): read_didemo(d, 'test')

def test_paragraph_against_a_plain_sort():
    sents, starts = ['c', 'a', 'b', 'd'], [5.0, 0.0, 2.5, 2.5]
    ref = [s for _, _, s in sorted(zip(starts, range(4), sents, strict=True))]
    assert paragraph(sents, starts) == ' '.join(ref) == 'a b d c'

# --- LSMDC ------------------------------------------------------------------------------------------------------------

def test_read_lsmdc(tmp_path):
    d = tmp_path/'a'; d.mkdir()
    rows = ['1001_Flight_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.54.000\tSOMEONE '
            'says "hi", then leaves.',
            '', '1001_Flight_00.01.00.000-00.01.02.000\t0\t0\t0\t0\tShe looks\tat him.',     # a tab inside the sentence
            '1002_Café_00.00.01.000-00.00.02.000\t0\t0\t0\t0\tÀ café.']
    (d/'LSMDC16_challenge_1000_publictect.csv').write_text('\n'.join(rows) + '\n', encoding='utf-8')
    assert read_lsmdc(d, 'test') == [('1001_Flight_00.00.51.926-00.00.54.129', 'SOMEONE says "hi", then leaves.'),
                                     ('1001_Flight_00.01.00.000-00.01.02.000', 'She looks\tat him.'),
                                     ('1002_Café_00.00.01.000-00.00.02.000', 'À café.')]
    (d/'LSMDC16_annos_val.csv').write_text('clip\t0\t0\tonly four\n')
    with pytest.raises(ValueError, match=r'LSMDC16_annos_val\.csv, line 1: 4 tab-separated fields, expected 6'):
        read_lsmdc(d, 'val')
    with pytest.raises(FileNotFoundError, match='LSMDC16_annos_training.csv'): read_lsmdc(d, 'train')

# --- ActivityNet ------------------------------------------------------------------------------------------------------

def test_read_activitynet(tmp_path):
    d = tmp_path/'a'; d.mkdir()
    (d/'val_ids.json').write_text(json.dumps(['v_abc', 'v_xyz']))
    (d/'val_1.json').write_text(json.dumps({'v_abc': dict(duration=30.0, timestamps=[[10.0, 20.0], [0.5, 9.0]],
                                                          sentences=[' Then it ends.', 'A man starts.']),
                                            'v_xyz': dict(duration=5.0, timestamps=[[0, 5]], sentences=['Ça va.']),
                                            'v_unused': dict(duration=1.0, timestamps=[[0, 1]], sentences=['x'])}))
    assert read_activitynet(d, 'val') == [('v_abc', 'A man starts. Then it ends.'), ('v_xyz', 'Ça va.')]
    (d/'val_1.json').write_text(json.dumps({'v_abc': dict(duration=3.0, timestamps=[], sentences=[]),
                                            'v_xyz': dict(timestamps=[[0, 1]], sentences=['a'])}))
    with pytest.raises(ValueError, match="sentence list of video 'v_abc' is empty"): read_activitynet(d, 'val')
    with pytest.raises(ValueError, match='valid splits'): read_activitynet(d, 'test')

# --- finding videos ---------------------------------------------------------------------------------------------------

def test_video_lookup_namings(tmp_path):
    v = tmp_path/'videos'; (v/'movie').mkdir(parents=True)
    for name in ('abc.mp4', 'clip.avi', 'movie/1001_M_00.01.mkv', 'x.mov.mp4', 'raw.mov', 'w.webm', 'notes.txt'):
        (v/name).write_bytes(b'0')
    look = VideoLookup(v)
    assert look('abc') == v/'abc.mp4' and look('clip') == v/'clip.avi' and look('w') == v/'w.webm'
    assert look('1001_M_00.01') == v/'movie'/'1001_M_00.01.mkv'                   # LSMDC: in a subfolder
    assert look('x.mov') == v/'x.mov.mp4' and look('raw.mov') == v/'raw.mov'       # DiDeMo: id with its extension
    assert VideoLookup(v, BENCHMARKS['activitynet'].stems)('v_abc') == v/'abc.mp4'  # ActivityNet: without v_
    with pytest.raises(FileNotFoundError,
                       match=r"video 'notes' not found: looked for notes with extension \.mp4/\.avi/\.mkv/\.webm"):
        look('notes')
    (v/'movie'/'abc.mkv').write_bytes(b'0')
    with pytest.raises(ValueError, match="two videos .* answer to 'abc'"): VideoLookup(v)('nothere')

def test_missing_video_is_a_counted_skip(tmp_path):
    v = tmp_path/'videos'; v.mkdir()
    ds = VideoTextDataset([('gone', 'a caption')], v, ext=None)
    assert ds[0] is None and ds.n_skipped == 1

# --- evaluation: multi-sentence and paragraphs ------------------------------------------------------------------------

def reference_ranks(sim, cv):
    "t2v: rank of the caption's video; v2t: best rank of any of the video's captions among all captions. Plain loops."
    T, V = len(sim), len(sim[0])
    t2v = [1 + sum(sim[i][j] > sim[i][cv[i]] for j in range(V)) for i in range(T)]
    v2t = []
    for j in range(V):
        mine = [i for i in range(T) if cv[i] == j]
        v2t.append(min(1 + sum(sim[k][j] > sim[i][j] for k in range(T) if cv[k] != j) for i in mine))
    return t2v, v2t

def test_multi_sentence_and_paragraph_evaluation(tmp_path):
    toy = make_toy_msrvtt(tmp_path/'toy', n_videos=12, seed=1)
    for layout, expect_multi in (('msvd', True), ('didemo', False)):
        d = write_toy_layout(toy, layout, tmp_path/layout)
        pairs = BENCHMARKS[layout].read(d, 'test')
        pos = {}
        cv = [pos.setdefault(v, len(pos)) for v, _ in pairs]
        assert (len(pairs) > len(pos)) == expect_multi and BENCHMARKS[layout].paragraphs == (not expect_multi)
        g = torch.Generator().manual_seed(0)
        sim = torch.randn(len(pairs), len(pos), generator=g)
        sim[0, cv[0]] = 5.0                                                      # caption 0 finds its video first
        m = retrieval_metrics(sim, torch.tensor(cv) if expect_multi else None)
        t2v, v2t = reference_ranks(sim.tolist(), cv)
        assert m['t2v']['R1'] == pytest.approx(100 * sum(r == 1 for r in t2v) / len(t2v))
        assert m['v2t']['R1'] == pytest.approx(100 * sum(r == 1 for r in v2t) / len(v2t))
        assert (m['t2v']['MnR'] == pytest.approx(sum(t2v) / len(t2v))
                and m['v2t']['MnR'] == pytest.approx(sum(v2t) / len(v2t)))

# --- presets, and a training step on each layout ----------------------------------------------------------------------

def test_presets_match_the_released_recipes():
    got = {n: load_config(n) for n in ('msvd-vitb32', 'didemo-vitb32', 'lsmdc-vitb32', 'activitynet-vitb32')}
    assert [(c.dataset, c.max_words, c.max_frames, c.batch_size) for c in got.values()] == \
           [('msvd', 32, 12, 128), ('didemo', 64, 64, 32), ('lsmdc', 32, 12, 128), ('activitynet', 64, 64, 64)]
    an = got['activitynet-vitb32']
    assert (an.n_queries, an.epochs, an.test_split) == (12, 10, 'val')
    base = load_config('msrvtt-vitb32')
    for c in got.values():
        assert (c.lr, c.gim_temp, c.sim_lambda, c.precision, c.clip_model) == (base.lr, base.gim_temp, base.sim_lambda,
                                                                               base.precision, base.clip_model)
    assert PAPER_T2V['msvd'] == dict(R1=47.5, R5=76.3, R10=86.1, MnR=9.8) and PAPER_T2V['lsmdc']['MnR'] == 56.2
    assert PAPER_T2V['didemo']['R1'] == 46.7 and PAPER_T2V['activitynet']['R10'] == 83.9

@pytest.fixture(scope='module')
def toy(tmp_path_factory): return make_toy_msrvtt(tmp_path_factory.mktemp('ds')/'toy', n_videos=12, seed=2)

@pytest.mark.parametrize('layout', LAYOUTS)
def test_one_training_step_per_preset(toy, tmp_path, layout):
    import glscl.train as T
    from glscl.model import GLSCL
    d = write_toy_layout(toy, layout, tmp_path/layout)
    preset = f'{layout}-vitb32'
    own = load_config(preset)   # the tiny CLIP's text tower (and so the temporal
    # transformer initialised from it) holds 32 positions
    words, frames = min(own.max_words, 32), min(own.max_frames, 32)
    cfg = load_config(preset, max_words=words, max_frames=frames, anno_dir=d, video_dir=d/'videos', frame_cache='none',
                      clip_model='glscl-tiny', clip_pretrained='none', image_size=64, precision='fp32', augment='none',
                      freeze_conv1='false', batch_size=4, num_workers=0, out_dir=tmp_path/'run')
    assert [p.name for p in annotation_files(cfg, cfg.test_split)] == list(BENCHMARKS[layout].files(cfg.test_split))
    ds = dataset_from_config(cfg, cfg.train_split, uint8=True)
    batch = collate_videos([ds[i] for i in range(0, 4 * (len(ds) // 4), len(ds) // 4)][:4])
    assert batch['size'] == 4 and batch['n_skipped'] == 0 and batch['ids'].shape[1] == cfg.max_words
    assert batch['frame_mask'].shape[1] <= cfg.max_frames and batch['frame_mask'].sum(1).min() >= 1
    torch.manual_seed(0)
    m = GLSCL(cfg)
    opt = T.make_optimizer(m, cfg); sched = T.make_scheduler(opt, cfg, 10)
    before = [p.detach().clone() for p in m.lim.parameters()]
    recs = [T.train_step(m, batch, opt, sched, cfg, k) for k in range(2)]   # the released warmup's first step has lr 0
    assert (all(math.isfinite(r['loss']) for r in recs)
            and any(not torch.equal(a, b) for a, b in zip(before, m.lim.parameters(), strict=True)))
    caps, vids, cv = T.split_items(cfg, cfg.test_split)
    assert len(vids) == 2 and all(video_lookup(cfg)(v).is_file() for v in vids)
    assert (len(caps) > len(vids)) == (layout == 'msvd')
