"""The frame cache: the same tensors as the video path, a mismatched cache refused, resume after a kill, unreadable
videos listed and skipped, shards rolling over, augmentation after the cache, and `glscl cache-frames`."""
import json
import os
import shutil
import pytest
import torch
from glscl.config import load_config
from glscl.toyworld import make_toy_msrvtt
from glscl.framecache import build_frame_cache, open_frame_cache, FrameCache, split_videos
from glscl.presetdata import dataset_from_config, videos_from_config
from glscl.cli import main

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_toy_msrvtt(tmp_path_factory.mktemp('toy')/'toy', n_videos=24, seed=4)

@pytest.fixture
def cfg(world, tmp_path):
    return load_config('toy', anno_dir=world, video_dir=world/'videos', toy_videos=24, frame_cache=tmp_path/'cache')

def same_items(a, b, idx):
    for i in idx:
        x, y = a[i], b[i]
        assert (x is None) == (y is None), i
        if x is None: continue
        assert torch.equal(x['frames'], y['frames']) and torch.equal(x['frame_mask'], y['frame_mask']), i

def test_cache_gives_the_video_path_tensors(cfg):
    r = build_frame_cache(cfg, progress=False)
    vids = split_videos(cfg, [cfg.train_split, cfg.test_split])
    assert r['videos'] == len(vids) == 24 and not r['unreadable']
    plain = cfg.replace(frame_cache=None)
    a, b = dataset_from_config(plain, 'train'), dataset_from_config(cfg, 'train')
    assert a.frame_cache is None and isinstance(b.frame_cache, FrameCache)
    same_items(a, b, range(0, len(a), 7))
    same_items(videos_from_config(plain, vids), videos_from_config(cfg, vids), range(len(vids)))
    # through DataLoader workers (the cache is pickled without its memory maps)
    dl = lambda ds: list(torch.utils.data.DataLoader(videos_from_config(ds, vids[:6]), batch_size=3, num_workers=2,
                                                     collate_fn=lambda b: torch.stack([x['frames'] for x in b])))
    assert all(torch.equal(x, y) for x, y in zip(dl(plain), dl(cfg), strict=True))

def test_mismatched_cache_refused(cfg, caplog):
    "A cache of other sampling settings is never read: the datasets say so and read the videos; building into it fails."
    build_frame_cache(cfg, progress=False)
    for k, v in (('max_frames', 8), ('fps', 2.0), ('frame_sampling', 'released')):
        caplog.clear()
        ds = dataset_from_config(cfg.replace(**{k: v}), 'train')
        assert ds.frame_cache is None and 'other sampling settings: ' in caplog.text and f'{k}=' in caplog.text
        assert ds[0]['frame_mask'].shape[0] == cfg.replace(**{k: v}).max_frames
        with pytest.raises(ValueError, match='other sampling settings'):
            build_frame_cache(cfg.replace(**{k: v}), progress=False)              # never mixed into one cache
    with pytest.raises(ValueError, match='other sampling settings'): FrameCache(cfg.frame_cache, dict(max_frames=3))

def test_resume_after_a_kill(cfg):
    r = build_frame_cache(cfg, progress=False, stop_after=5)
    assert r['stopped_after'] == 5 and open_frame_cache(cfg) is None               # unfinished: not used
    with pytest.raises(ValueError, match='unfinished'): FrameCache(cfg.frame_cache)
    # a kill in the middle of the next video: bytes without an index line, and half an index line
    shard = cfg.frame_cache/'frames-00000.u8'
    with open(shard, 'ab') as f: f.write(os.urandom(5000))
    with open(cfg.frame_cache/'index.jsonl', 'a') as f: f.write('{"video": "video9", "sha')
    r = build_frame_cache(cfg, progress=False)
    assert r['videos'] == 24
    recs = [json.loads(line) for line in (cfg.frame_cache/'index.jsonl').read_text().splitlines()]
    assert len(recs) == len({x['video'] for x in recs}) == 24
    assert shard.stat().st_size == sum(x['nbytes'] for x in recs)                  # the torn tail was cut off
    plain = cfg.replace(frame_cache=None)
    same_items(dataset_from_config(plain, 'train'), dataset_from_config(cfg, 'train'), range(0, 200, 9))

def test_unreadable_videos_listed_and_skipped(world, tmp_path):
    w = tmp_path/'w'; shutil.copytree(world, w)
    (w/'videos'/'video3.mp4').write_bytes(b'not a video at all')
    c = load_config('toy', anno_dir=w, video_dir=w/'videos', toy_videos=24, frame_cache=tmp_path/'c')
    r = build_frame_cache(c, progress=False)
    assert r['unreadable'] == ['video3'] and r['videos'] == 23
    ds = videos_from_config(c, ['video2', 'video3'])
    assert ds[0] is not None and ds[1] is None and ds.n_skipped == 1              # counted like the video path

def test_shards_roll_over(cfg):
    r = build_frame_cache(cfg, progress=False, shard_bytes=400_000)
    shards = sorted(p.name for p in cfg.frame_cache.glob('frames-*.u8'))
    assert len(shards) > 3 and r['videos'] == 24
    vids = split_videos(cfg, [cfg.train_split, cfg.test_split])
    same_items(videos_from_config(cfg.replace(frame_cache=None), vids), videos_from_config(cfg, vids), range(24))

def test_augmentation_runs_after_the_cache(cfg):
    build_frame_cache(cfg, progress=False)
    c = cfg.replace(augment='rand-m7-n4-mstd0.5-inc1', freeze_visual=False)
    ds = dataset_from_config(c, 'train')
    assert ds.frame_cache is not None
    seen = []
    for e in range(4):
        ds.set_epoch(e); seen.append(ds[5]['frames'])
    assert any(not torch.equal(seen[0], s) for s in seen[1:])                       # random per epoch
    ds.set_epoch(0); assert torch.equal(ds[5]['frames'], seen[0])                  # and reproducible

def test_cache_frames_command(world, tmp_path, capsys):
    main(['cache-frames', '--preset', 'toy', '--set', f'anno_dir={world}', '--set', f'video_dir={world}/videos',
          '--set', 'toy_videos=24', '--set', 'toy_seed=4', '--out', str(tmp_path/'cli'), '--quiet'])
    out = capsys.readouterr().out
    assert 'frame cache' in out and '24 videos' in out and (tmp_path/'cli'/'meta.json').exists()

def test_stale_or_foreign_cache_is_not_read(cfg, world, tmp_path):
    "A video changed after caching is decoded again; a cache of another video folder is not used."
    w = tmp_path/'w'; shutil.copytree(world, w)
    c = cfg.replace(video_dir=w/'videos', anno_dir=w)
    build_frame_cache(c, progress=False)
    ds = videos_from_config(c, ['video1', 'video2'])
    assert ds.frame_cache.has('video1', w/'videos'/'video1.mp4')
    shutil.copy(w/'videos'/'video5.mp4', w/'videos'/'video1.mp4')                 # video1 replaced by other content
    got = ds[0]['frames']
    want = videos_from_config(c.replace(frame_cache=None), ['video5'])[0]['frames']
    assert torch.equal(got, want)   # the new file's frames, not the cached ones
    assert open_frame_cache(cfg.replace(frame_cache=c.frame_cache)) is None   # cfg reads another folder of videos

def test_uint8_pixels_give_the_same_model_input(cfg):
    """Datasets with `uint8 = True` (what training uses) hand the model pixels that it normalises to exactly the float
    path's input."""
    from glscl.model import GLSCL
    from glscl.video import normalize_frames
    from glscl.data import collate_videos
    build_frame_cache(cfg, progress=False)
    f = dataset_from_config(cfg, 'train'); u = dataset_from_config(cfg, 'train', uint8=True)
    a, b = f[3], u[3]
    assert b['frames'].dtype == torch.uint8 and torch.equal(normalize_frames(b['frames']), a['frames'])
    m = GLSCL(cfg.replace(clip_pretrained='none', freeze_visual=False)).eval()
    fb, ub = collate_videos([f[i] for i in (0, 40, 80)]), collate_videos([u[i] for i in (0, 40, 80)])
    with torch.no_grad():
        x, y = m.encode_video(fb['frames'], fb['frame_mask']), m.encode_video(ub['frames'], ub['frame_mask'])
        assert torch.equal(x['frames'], y['frames']) and torch.equal(x['query'], y['query'])
        oc = GLSCL(cfg.replace(clip_pretrained='none', official_compat=True)).eval()
        assert torch.equal(oc.encode_video(fb['frames'], fb['frame_mask'])['frames'],
                           oc.encode_video(ub['frames'], ub['frame_mask'])['frames'])

def test_a_cache_of_another_format_is_not_read_nor_extended_and_ensure_rebuilds_it(cfg, caplog):
    """A cache written by another version of glscl (its frames resized differently) is refused; ensure_frame_cache
    rebuilds it."""
    from glscl.framecache import ensure_frame_cache, CACHE_FORMAT
    build_frame_cache(cfg, progress=False)
    meta_p = cfg.frame_cache/'meta.json'
    meta = json.loads(meta_p.read_text()); meta['format'] = 'glscl-frame-cache-1'; meta_p.write_text(json.dumps(meta))
    with caplog.at_level('WARNING'): assert open_frame_cache(cfg) is None
    assert 'glscl-frame-cache-1' in caplog.text
    with pytest.raises(ValueError, match='another version of glscl'): build_frame_cache(cfg, progress=False)
    assert ensure_frame_cache(cfg) and json.loads(meta_p.read_text())['format'] == CACHE_FORMAT
    assert open_frame_cache(cfg) is not None
