"""Trust nothing you are handed (issue 23): no file a user may have been given can run code when glscl loads it; paths
read from data files stay inside their folders; one writer per folder. Each test goes through the public API or the
CLI and failed on the code before the fix."""
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glscl.config import load_config, lock_folder, unlock_folder, FolderBusy, UnsafeFile
from glscl.data import read_msrvtt, VideoDataset, MSRVTT_FILES
from glscl.toyworld import make_toy_msrvtt
from glscl.model import GLSCL
import glscl.train as T
from conftest import cli_here


class Planted:
    "A pickle whose loading creates `marker`: the proof that loading ran code from the file."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, 'w'))

def plant(path, marker, raw: bool = False):
    "A hostile file at `path`: a torch zip whose checkpoint dict holds the payload, or a raw pickle of it."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    obj = {'format': 'glscl-checkpoint-1', 'model': {}, 'x': Planted(marker)}
    if raw:
        with open(path, 'wb') as f: pickle.dump(obj, f)
    else: torch.save(obj, path)
    return path

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_toy_msrvtt(tmp_path_factory.mktemp('trust')/'toy', n_videos=24, seed=3)

@pytest.fixture
def cfg(world, tmp_path):
    return load_config('toy', anno_dir=world, video_dir=world/'videos', toy_videos=24, toy_seed=3,
                       clip_pretrained='none', batch_size=16, eval_batch_size=8, epochs=1, out_dir=tmp_path/'run',
                       frame_cache='none')

def sets(cfg):
    "--set arguments that make the CLI use `cfg`'s world and run folder."
    return [a for k in ('anno_dir', 'video_dir', 'toy_videos', 'toy_seed', 'clip_pretrained', 'batch_size',
                        'eval_batch_size', 'out_dir', 'frame_cache')
            for a in ('--set', f"{k}={getattr(cfg, k) if getattr(cfg, k) is not None else 'none'}")]

# --- 1. no code from files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('raw', [False, True], ids=['torch-zip', 'raw-pickle'])
def test_a_hostile_checkpoint_runs_nothing_anywhere(cfg, tmp_path, capsys, raw):
    marker = tmp_path/'RAN'
    bad = plant(tmp_path/'last.pt', marker, raw)
    for load in (lambda: T.read_checkpoint(bad), lambda: T.model_from_checkpoint(bad),
                 lambda: T.train(cfg, resume=bad, progress=False)):
        with pytest.raises(UnsafeFile, match=r'--trust-pickle'): load()
    for args in (['eval', '--checkpoint', str(bad)], ['compare', str(bad)],
                 ['search', 'a red circle', '--index', str(tmp_path/'idx'), '--checkpoint', str(bad)],
                 ['train', *sets(cfg), '--resume', str(bad)]):
        code, err = cli_here(capsys, *args)
        assert code == 2 and str(bad) in err and '--trust-pickle' in err and 'Traceback' not in err, err
    assert not marker.exists()

def test_checkpoints_are_plain_and_resume_stays_exact(cfg, tmp_path):
    "What save_checkpoint writes loads with weights_only=True, and the RNG states come back exactly."
    import random
    m = GLSCL(cfg)
    T.seed_everything(5); random.random(); np.random.rand(3); torch.rand(2)
    p = T.save_checkpoint(tmp_path/'a.pt', m, state=dict(step=3))
    ck = torch.load(p, weights_only=True)
    draw = lambda: (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    want = draw()
    T.set_rng_state(ck['rng'])
    assert draw() == want and ck['state']['step'] == 3

def test_an_old_pickled_checkpoint_needs_the_explicit_flag(cfg, tmp_path, caplog):
    import random
    m = GLSCL(cfg)
    old = T.read_checkpoint(T.save_checkpoint(tmp_path/'new.pt', m))
    old['rng'] = dict(old['rng'], python=random.getstate(), numpy=np.random.get_state())  # how glscl stored them before
    torch.save(old, tmp_path/'old.pt')
    with pytest.raises(UnsafeFile, match=r'--trust-pickle \(trust_pickle=True\)'): T.read_checkpoint(tmp_path/'old.pt')
    with caplog.at_level(logging.WARNING):
        ck = T.load_checkpoint(tmp_path/'old.pt', GLSCL(cfg), restore_rng=True, trust_pickle=True)
    assert ck['format'] == 'glscl-checkpoint-1' and 'full pickle' in caplog.text

def test_a_planted_evaluation_cache_runs_nothing(cfg, tmp_path, caplog):
    m = GLSCL(cfg).eval()
    cache, marker = tmp_path/'cache', tmp_path/'RAN'
    a = T.evaluate(m, cfg, cache_dir=cache, progress=False)
    key, _ = T.encoding_key(m, cfg, 'test')
    for raw in (False, True):
        plant(cache/f'enc-test-{key}.pt', marker, raw)
        with caplog.at_level(logging.WARNING): r = T.evaluate(m, cfg, cache_dir=cache, progress=False)
        assert not marker.exists() and not r['cached'] and torch.equal(r['sim'], a['sim'])
        assert f'enc-test-{key}.pt' in caplog.text and 'nothing in it ran' in caplog.text
    assert T.evaluate(m, cfg, cache_dir=cache, progress=False)['cached']      # replaced by a safe one

def test_a_planted_tiny_clip_cache_runs_nothing(tmp_path, monkeypatch, caplog):
    import glscl.tinyclip as C
    from glscl.clip import load_clip
    marker = tmp_path/'RAN'
    for raw in (False, True):
        p = plant(tmp_path/f'tiny{raw}.pt', marker, raw)
        with pytest.raises(ValueError, match='not a readable CLIP checkpoint'): load_clip('glscl-tiny', str(p))
        # the rebuild itself takes minutes
        monkeypatch.setattr(C, 'pretrain_tiny_clip', lambda **kw: {'w': torch.zeros(2)})
        with caplog.at_level(logging.WARNING): assert C.tiny_clip_checkpoint(p) == p
        assert 'cannot be read' in caplog.text and not marker.exists()

def test_index_and_frame_cache_files_cannot_carry_code(tmp_path):
    "Their metadata is JSON and their arrays raw or .npy without pickle: a planted pickle is an error naming the file."
    from glscl.search import VideoIndex
    from glscl.framecache import FrameCache
    marker, idx = tmp_path/'RAN', tmp_path/'idx'
    idx.mkdir()
    (idx/'index.json').write_text(json.dumps(dict(format='glscl-index-1', model_id='x', folder=str(tmp_path),
                                                  dtype='float32', files=['a.mp4'], skipped=[])))
    np.save(idx/'frames.npy', np.array([Planted(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r'frames\.npy'): VideoIndex.load(idx)
    plant(idx/'index.json', marker, raw=True)
    with pytest.raises(ValueError, match=r'index\.json'): VideoIndex.load(idx)
    fc = tmp_path/'fc'; fc.mkdir()
    plant(fc/'meta.json', marker, raw=True)
    with pytest.raises(ValueError, match=r'meta\.json'): FrameCache(fc)
    assert not marker.exists()

# --- 2. paths from data files stay inside their folders ---------------------------------------------------------------

def copy_annos(world, dst):
    dst.mkdir()
    for f in MSRVTT_FILES.values():
        if (world/f).exists(): shutil.copy(world/f, dst/f)
    return dst

@pytest.mark.parametrize('bad', ['../../secret', '/etc/passwd', 'videos/../../x'])
def test_video_ids_that_leave_the_folder_are_refused(world, tmp_path, bad):
    a = copy_annos(world, tmp_path/'a')
    test = a/MSRVTT_FILES['test']
    lines = test.read_text().splitlines()
    f = lines[2].split(',')
    lines[2] = ','.join(f[:2] + [bad] + f[3:])
    test.write_text('\n'.join(lines) + '\n')
    with pytest.raises(ValueError, match=rf"{MSRVTT_FILES['test']}, line 3: the video id .* outside the video folder"):
        read_msrvtt(a, 'test')
    ds = VideoDataset([bad], world/'videos', ext=None)
    with pytest.raises(ValueError, match='outside the video folder'): ds[0]

@pytest.fixture(scope='module')
def cache(world, tmp_path_factory):
    from glscl.framecache import build_frame_cache
    c = load_config('toy', anno_dir=world, video_dir=world/'videos', toy_videos=24, toy_seed=3, clip_pretrained='none',
                    max_frames=3, image_size=32)
    folder = tmp_path_factory.mktemp('fc')/'cache'
    build_frame_cache(c, folder=folder, progress=False)
    return c, folder

@pytest.mark.parametrize('field,value,why', [('shard', '../../../etc/passwd', 'not a shard file of the cache'),
                                             ('shard', 'frames-00007.u8', 'shard frames-00007.u8 is missing'),
                                             ('offset', 10 ** 12, 'do not fit its shard'), ('n', 99, 'frame count 99'),
                                             ('offset', -5, 'offset -5'), ('nbytes', 3, 'needs')])
def test_frame_cache_lines_that_read_elsewhere_are_refused(cache, tmp_path, field, value, why):
    from glscl.framecache import FrameCache, cache_settings
    c, src = cache
    folder = tmp_path/'c'; shutil.copytree(src, folder)
    lines = (folder/'index.jsonl').read_text().splitlines()
    r = json.loads(lines[1]); r[field] = value; lines[1] = json.dumps(r)
    (folder/'index.jsonl').write_text('\n'.join(lines) + '\n')
    with pytest.raises(ValueError, match=rf"index\.jsonl, line 2: .*{why}"): FrameCache(folder, cache_settings(c))

# --- 3. one writer per folder ----------------------------------------------------------------------------------------

def holder(folder, what='run folder'):
    "Another process that holds `folder`'s lock until killed (started, and holding, when this returns)."
    p = subprocess.Popen([sys.executable, '-c',
                          f'import time; from glscl.config import lock_folder; lock_folder({str(folder)!r}, {what!r}); '
                          'print("held", flush=True); time.sleep(120)'], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == 'held'
    return p

def test_a_second_writer_is_refused_and_a_dead_holders_lock_taken_over(cfg, tmp_path, capsys):
    from glscl.framecache import build_frame_cache
    from glscl.search import VideoIndex
    out = Path(cfg.out_dir)
    p = holder(out)
    try:
        with pytest.raises(FolderBusy, match=rf"run folder {out} is being written by process {p.pid}"):
            T.train(cfg, progress=False)
        code, err = cli_here(capsys, 'train', *sets(cfg))
        assert code == 2 and f'process {p.pid}' in err and str(out) in err
        with pytest.raises(FolderBusy, match=f'process {p.pid}'): build_frame_cache(cfg, folder=out, progress=False)
        with pytest.raises(FolderBusy, match=f'process {p.pid}'):
            T.evaluate(GLSCL(cfg), cfg, cache_dir=out, progress=False)
        idx = VideoIndex(out, dict(format='glscl-index-1', model_id='x', folder=str(cfg.video_dir), dtype='float32',
                                   files=[], skipped=[]),
                         {}, GLSCL(cfg))
        with pytest.raises(FolderBusy, match=f'process {p.pid}'): idx.update(progress=False)
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    (out/'.last.pt.x1y2z3.tmp').write_bytes(b'half of a checkpoint')            # what the killed writer left behind
    assert json.loads((out/'.lock').read_text())['pid'] == p.pid
    lock_folder(out, 'run folder')                                             # the dead holder's lock is taken over
    try: assert json.loads((out/'.lock').read_text())['pid'] == os.getpid() and not (out/'.last.pt.x1y2z3.tmp').exists()
    finally: unlock_folder(out)
    assert not (out/'.lock').exists()                                          # released: nothing of the lock is left

def test_two_cache_builds_at_once_one_is_refused(cache, tmp_path):
    "Two real `glscl cache-frames` processes into one folder: one builds, the other exits 2 naming the holder."
    c, _ = cache
    folder = tmp_path/'fc'
    cmd = [sys.executable, '-c', 'from glscl.cli import main; main()', 'cache-frames', '--quiet', '--out', str(folder),
           '--set', f'anno_dir={c.anno_dir}', '--set', f'video_dir={c.video_dir}', '--set', 'toy_videos=24', '--set',
           'toy_seed=3', '--set', 'max_frames=3', '--set', 'image_size=32', '--set', 'clip_pretrained=none']
    go = tmp_path/'go'   # the first writer decodes nothing until the second has tried (no race with a slow start)
    slow = [sys.executable, '-c', 'import os, time, glscl.framecache as F; g = F._Decode.__getitem__; '
            f'wait = lambda: [time.sleep(0.05) for _ in range(2400) if not os.path.exists({str(go)!r})]; '
            'F._Decode.__getitem__ = lambda s, i: (wait(), g(s, i))[1]; from glscl.cli import main; main()', *cmd[3:]]
    p = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2400):                                                      # until the first one holds the folder
        if (folder/'.lock').exists() and (folder/'meta.json').exists(): break
        time.sleep(0.05)
    r = subprocess.run(cmd, capture_output=True, text=True)
    go.write_text('')
    out, err = p.communicate()
    codes = sorted([p.returncode, r.returncode])
    assert codes == [0, 2], (out, err, r.stderr)
    assert 'is being written by process' in (err + r.stderr)
    from glscl.framecache import FrameCache, cache_settings
    assert len(FrameCache(folder, cache_settings(c.replace(max_frames=3, image_size=32)))) == 24
    assert not (folder/'.lock').exists()

def test_a_fresh_cli_run_over_a_run_is_refused(cfg, capsys):
    out = Path(cfg.out_dir); out.mkdir(parents=True)
    (out/'last.pt').write_bytes(b'the run of yesterday'); (out/'log.jsonl').write_text('{"kind": "step", "step": 1}\n')
    code, err = cli_here(capsys, 'train', *sets(cfg))
    assert code == 2 and '--resume' in err and '--overwrite' in err and str(out) in err
    assert (out/'last.pt').read_bytes() == b'the run of yesterday'

# --- 4. the search index never answers wrong silently -----------------------------------------------------------------

@pytest.fixture
def index(cfg, world, tmp_path):
    from glscl.search import VideoIndex
    torch.manual_seed(0)
    m = GLSCL(cfg).eval()
    folder = tmp_path/'videos'; folder.mkdir()
    vids = sorted(p.name for p in (world/'videos').glob('*.mp4'))
    for v in vids[:4]: (folder/v).symlink_to((world/'videos'/v).resolve())
    idx = VideoIndex.build(folder, m, tmp_path/'index', progress=False)
    return dict(idx=idx, model=m, folder=folder, path=tmp_path/'index', spare=[world/'videos'/v for v in vids[4:]])

def test_an_update_is_all_or_nothing(index, monkeypatch):
    from glscl.search import VideoIndex
    idx, m = index['idx'], index['model']
    before = idx.scores(['a red circle'])
    (index['folder']/index['spare'][0].name).symlink_to(index['spare'][0].resolve())
    calls, save = [], np.save
    def dies(*a, **kw):                                                        # killed between two arrays of the update
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return save(*a, **kw)
    monkeypatch.setattr(np, 'save', dies)
    with pytest.raises(KeyboardInterrupt): idx.update(progress=False)
    monkeypatch.setattr(np, 'save', save)
    again = VideoIndex.load(index['path'], m)                                  # the old index, whole
    assert len(again) == 4 and torch.equal(again.scores(['a red circle']), before)
    assert again.update(progress=False)['added'] == 1                          # the rerun finishes the job
    assert len(VideoIndex.load(index['path'], m)) == 5
    # no leftover generation
    assert sorted(p.name for p in index['path'].iterdir() if p.is_dir()) == [again.meta['generation']]

def rewrite_array(path, k, fn, fix_checksum=True):
    """Change array `k` of the index in `path` by `fn`; with `fix_checksum` record its new checksum (damage that only
    values show)."""
    from glscl.index import _sha256
    meta = json.loads((path/'index.json').read_text())
    f = path/meta['generation']/f'{k}.npy'
    x = np.load(f).copy(); x = fn(x); f.unlink(); np.save(f, x)
    if fix_checksum:
        meta['arrays'][k].update(sha256=_sha256(f), shape=list(x.shape))
        (path/'index.json').write_text(json.dumps(meta))

@pytest.mark.parametrize('damage,words', [
    (lambda p: (p/json.loads((p/'index.json').read_text())['generation']/'query.npy').unlink(),
     r'query\.npy is missing'),
    (lambda p: rewrite_array(p, 'query', lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x)
                             .astype(x.dtype)), r'query\.npy: NaN or inf'),
    (lambda p: rewrite_array(p, 'frames', lambda x: x * np.float32(np.nan)), r'frames\.npy: NaN or inf'),
    (lambda p: rewrite_array(p, 'frames', lambda x: x + 1, fix_checksum=False), r'frames\.npy: its checksum differs'),
    (lambda p: rewrite_array(p, 'mask', lambda x: x[:3]), r'mask\.npy: bool \(3,'),
    (lambda p: (p/'index.json').write_text(json.dumps(dict(json.loads((p/'index.json').read_text()), files='ip.'))),
     r"index\.json: 'files' is not a list"),
    (lambda p: (lambda f: f.write_bytes(f.read_bytes()[:200]))(
        p/json.loads((p/'index.json').read_text())['generation']/'gram.npy'), r'gram\.npy cannot be read'),
    (lambda p: (p/'index.json').write_text(json.dumps({k: v for k, v in json.loads((p/'index.json').read_text()).items()
                                                       if k != 'model_id'})), r"index\.json: no model_id"),
], ids=['query-deleted', 'inf-query', 'nan-frames', 'changed-bytes', 'short-mask', 'files-a-string',
        'truncated-gram', 'no-model-id'])
def test_a_damaged_index_is_refused_naming_the_file(index, damage, words):
    from glscl.search import VideoIndex
    damage(index['path'])
    with pytest.raises(ValueError, match=words): VideoIndex.load(index['path'], index['model'])

def test_build_of_another_folder_is_refused(index, tmp_path, capsys):
    from glscl.search import main
    ck = T.save_checkpoint(tmp_path/'m.pt', index['model'])
    other = tmp_path/'other'; other.mkdir()
    assert main(['--index', str(index['path']), '--build', str(other), '--checkpoint', str(ck),
                 '--quiet', 'a red circle']) == 2
    err = capsys.readouterr().err
    assert str(index['folder'].resolve()) in err and str(other.resolve()) in err and '--index NEW_FOLDER' in err

def test_deleted_and_replaced_videos_are_handled_and_reported(index, capsys, tmp_path):
    from glscl.search import VideoIndex, main
    idx, folder, spare = index['idx'], index['folder'], index['spare']
    gone, replaced = idx.files[0], idx.files[1]
    (folder/gone).unlink()
    (folder/replaced).unlink(); shutil.copy(spare[1], folder/replaced)          # another video under the same name
    (folder/'broken.mp4').write_bytes(b'not a video')
    (folder/spare[2].name).symlink_to(spare[2].resolve())
    r = idx.update(progress=False)
    assert r == dict(added=1, updated=1, removed=1, skipped=1, total=4)
    assert gone not in idx.files and [h['file'] for h in idx.search('a red circle', k=10)].count(gone) == 0
    fresh = VideoIndex.build(folder, index['model'], tmp_path/'fresh', progress=False)
    order = [fresh.files.index(f) for f in idx.files]
    torch.testing.assert_close(idx.scores(['a blue square']), fresh.scores(['a blue square'])[:, order])
    ck = T.save_checkpoint(tmp_path/'m.pt', index['model'])
    (folder/'broken.mp4').write_bytes(b'still not a video, but changed')   # a skipped file is retried once it changes
    assert main(['--index', str(index['path']), '--build', str(folder), '--checkpoint', str(ck), '--quiet']) == 0
    assert 'added 0, updated 0, removed 0, skipped 1, total 4' in capsys.readouterr().out

# --- 5. inputs that cannot work are refused before work starts --------------------------------------------------------

def test_a_batch_larger_than_the_training_pairs_is_refused(cfg, capsys):
    n = len(T.dataset_from_config(cfg, cfg.train_split))
    with pytest.raises(ValueError, match=rf"batch_size={n + 2} is larger than the {n} training pairs"):
        T.train(cfg.replace(batch_size=n + 2), progress=False)
    assert not (Path(cfg.out_dir)/'last.pt').exists()
    code, err = cli_here(capsys, 'train', *sets(cfg.replace(batch_size=n + 2)))
    assert code == 2 and 'lower batch_size' in err

def test_divergence_stops_with_nonfiniteloss_and_keeps_last_good(cfg):
    c = cfg.replace(lr=1e6, max_steps=8, coef_lr=1.0)
    with pytest.raises(T.NonFiniteLoss, match=r'step \d+: ') as e: T.train(c, progress=False, ckpt_every=1)
    assert 'check the data' not in str(e.value)
    last = Path(c.out_dir)/'last.pt'
    if last.exists():                                                          # every checkpoint written is a good one
        ck = T.read_checkpoint(last)
        assert not T.nonfinite_tensors(ck['model'])

def test_a_full_disk_names_the_folder(cfg, tmp_path, monkeypatch):
    import errno
    from glscl.config import atomic_write
    p = atomic_write(tmp_path/'a.pt', lambda f: f.write(b'old'))
    def full(f): raise OSError(errno.ENOSPC, 'No space left on device')
    with pytest.raises(OSError, match=rf"No space left on device in {tmp_path} while writing a\.pt"):
        atomic_write(p, full)
    assert p.read_bytes() == b'old' and sorted(x.name for x in tmp_path.iterdir()) == ['a.pt']
    def torch_full(obj, f):
        raise RuntimeError('[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file '
                           'data/0: file write failed')
    monkeypatch.setattr(torch, 'save', torch_full)
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError, match=rf"No space left on device in {tmp_path/'run'}"):
        T.save_checkpoint(tmp_path/'run'/'last.pt', GLSCL(cfg))

def test_oversized_videos_are_counted_skips_and_too_many_frames_refused(cfg, world, monkeypatch, caplog):
    monkeypatch.setenv('GLSCL_MAX_PIXELS', '1000')                            # every toy video is above this cap
    ds = VideoDataset(['video0', 'video1'], world/'videos', ext='.mp4')
    with caplog.at_level(logging.WARNING): assert ds[0] is None and ds[1] is None
    assert ds.n_skipped == 2 and 'video0.mp4' in caplog.text and 'above the cap' in caplog.text
    m = GLSCL(cfg)
    with pytest.raises(ValueError, match=rf"max_frames=100 is more than the {m.temporal.pos.shape[0]} frame positions"):
        T.train(cfg.replace(max_frames=100), model=m, progress=False)

def test_two_trainings_at_once_one_is_refused_and_overwrite_replaces(cfg):
    """Two real `glscl train` processes into one run folder that holds an old run: the one with --overwrite replaces it,
    the other exits 2."""
    out = Path(cfg.out_dir); out.mkdir(parents=True)
    (out/'best.pt').write_bytes(b'the run of yesterday'); (out/'.last.pt.k1l2.tmp').write_bytes(b'half')
    args = ['train', *sets(cfg.replace(eval_batch_size=16)), '--set', 'max_steps=2', '--quiet']
    go = out.parent/'go'   # the first trainer takes no step until the second has tried (no race with a slow start)
    slow = [sys.executable, '-c', 'import os, time, glscl.train as T; s = T.train_step; '
            f'wait = lambda: [time.sleep(0.05) for _ in range(2400) if not os.path.exists({str(go)!r})]; '
            'T.train_step = lambda *a, **k: (wait(), s(*a, **k))[1]; from glscl.cli import main; main()',
            *args, '--overwrite']
    p = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):                                                      # until the first one holds the folder
        if (out/'.lock').exists() and not (out/'best.pt').exists(): break
        time.sleep(0.05)
    r = subprocess.run([sys.executable, '-c', 'from glscl.cli import main; main()', *args, '--overwrite'],
                       capture_output=True, text=True)
    go.write_text('')
    o, e = p.communicate()
    assert p.returncode == 0 and 'final checkpoint, step 2' in o, e
    assert r.returncode == 2 and f'run folder {out} is being written by process {p.pid}' in r.stderr, r.stderr
    assert [json.loads(line)['step'] for line in (out/'log.jsonl').read_text().splitlines()
            if '"step"' in line][:2] == [1, 2]
    assert not (out/'.last.pt.k1l2.tmp').exists() and T.read_checkpoint(out/'best.pt')['format'] == 'glscl-checkpoint-1'

def test_an_index_of_the_first_format_still_opens_and_moves_to_generations(index):
    from glscl.search import VideoIndex
    p, m = index['path'], index['model']
    before = index['idx'].scores(['a red circle'])
    meta = json.loads((p/'index.json').read_text())
    for f in (p/meta['generation']).iterdir(): f.rename(p/f.name)   # the glscl-index-1 layout: arrays beside index.json
    (p/meta['generation']).rmdir()
    (p/'index.json').write_text(json.dumps(dict({k: v for k, v in meta.items()
                                                 if k not in ('generation', 'arrays', 'stamps')},
                                                format='glscl-index-1')))
    old = VideoIndex.load(p, m)
    assert torch.equal(old.scores(['a red circle']), before)
    (index['folder']/index['spare'][0].name).symlink_to(index['spare'][0].resolve())
    assert old.update(progress=False)['added'] == 1
    assert old.meta['format'] == 'glscl-index-2' and not list(p.glob('*.npy')) and len(VideoIndex.load(p, m)) == 5
