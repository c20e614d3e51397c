"The toy world: MSR-VTT's exact layout, read back by read_msrvtt, deterministic, captions that name events."
import csv
import json
import numpy as np
import pytest
from glscl.data import read_msrvtt, MSRVTT_FILES
from glscl.video import sample_frames
from glscl.toyworld import (make_toy_msrvtt, toy_events, random_events, render_frame, event_geometry,
                            video_captions, COLOURS, SHAPE_WORDS, Event)
from glscl.tinyclip import toy_frames, frame_caption

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_toy_msrvtt(tmp_path_factory.mktemp('w')/'toy', n_videos=12, seed=3)

def test_layout_and_formats(world):
    data = json.loads((world/MSRVTT_FILES['data']).read_text())
    assert set(data) == {'info', 'videos', 'sentences'}
    assert set(data['videos'][0]) == {'category', 'url', 'video_id', 'start time', 'end time', 'split', 'id'}
    assert set(data['sentences'][0]) == {'caption', 'video_id', 'sen_id'}
    assert [s['sen_id'] for s in data['sentences']] == list(range(len(data['sentences'])))
    with open(world/MSRVTT_FILES['test']) as f: rows = list(csv.reader(f))
    assert (rows[0] == ['key', 'vid_key', 'video_id', 'sentence'] and rows[1][0] == 'ret0'
            and rows[1][1] == 'msr' + rows[1][2][5:])
    for k in ('train', 'train7k'):
        with open(world/MSRVTT_FILES[k]) as f: assert next(csv.reader(f)) == ['video_id']
    assert len(list((world/'videos').glob('*.mp4'))) == 12
    assert not [p for p in world.parent.iterdir() if p.name.startswith('.toy-')], 'temporary build folder left behind'

def test_read_back_and_splits(world):
    train, train7k, test = (read_msrvtt(world, s) for s in ('train', 'train7k', 'test'))
    tv, testv = {v for v, _ in train}, {v for v, _ in test}
    assert len(testv) == 2 and len(tv) == 10 and not tv & testv
    assert {v for v, _ in train7k} < tv and len(train) == 10 * 10
    data = json.loads((world/MSRVTT_FILES['data']).read_text())
    caps = {(s['video_id'], s['caption']) for s in data['sentences']}
    assert set(test) <= caps, 'the test sentence is one of the video captions'

def test_deterministic(world, tmp_path):
    again = make_toy_msrvtt(tmp_path/'toy', n_videos=12, seed=3)
    for f in MSRVTT_FILES.values(): assert (world/f).read_bytes() == (again/f).read_bytes()
    a, _ = sample_frames(world/'videos'/'video5.mp4'); b, _ = sample_frames(again/'videos'/'video5.mp4')
    assert np.array_equal(a, b)
    other = make_toy_msrvtt(tmp_path/'toy4', n_videos=12, seed=4)
    assert (other/MSRVTT_FILES['data']).read_bytes() != (world/MSRVTT_FILES['data']).read_bytes()

def test_cached_and_param_mismatch(world):
    mtime = (world/'toy_events.json').stat().st_mtime_ns
    assert make_toy_msrvtt(world, n_videos=12, seed=3) == world
    assert (world/'toy_events.json').stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match='other parameters'): make_toy_msrvtt(world, n_videos=12, seed=9)
    with pytest.raises(ValueError): make_toy_msrvtt(world.parent/'x', n_videos=2)

def test_events_tile_time_and_differ():
    rng = np.random.default_rng(0)
    for _ in range(50):
        evs = random_events(rng)
        assert evs[0].start == 0 and abs(evs[-1].end - 12) < 1e-9
        for a, b in zip(evs, evs[1:], strict=False):
            assert a.end == b.start and a.colour != b.colour and a.shape != b.shape

def test_video_shows_each_event_in_its_time(world):
    "The decoded video shows event i's colour during event i's time (a slow per-frame reference)."
    evs = toy_events(world)['video0']
    frames, mask = sample_frames(world/'videos'/'video0.mp4', max_frames=12, fps=1.0)
    assert mask.sum() == 12
    for k, fr in enumerate(frames):
        t = k + 0.125          # decord frame floor(k*4) shows time (4k+0.5)/4
        ev = next(e for e in evs if e.start <= t < e.end)
        dist = np.abs(fr.reshape(-1, 3).astype(int) - np.array(COLOURS[ev.colour])).sum(1)
        assert (dist < 60).sum() > 10, f'frame {k} should show the {ev.colour} {ev.shape}'

def test_render_geometry():
    ev = Event('red', 'square', 'moves left', 0, 4, 0.5, 0.5)
    x0, _, _ = event_geometry(ev, 0.0); x1, _, _ = event_geometry(ev, 1.0)
    assert x0 > 0.7 and x1 < 0.3
    img = render_frame(ev, 0.0, size=96)
    red = np.all(img == COLOURS['red'], -1)
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() / 96 - x0) < 0.02 and abs(ys.mean() / 96 - 0.5) < 0.02
    g = Event('blue', 'circle', 'grows', 0, 4)
    assert np.all(render_frame(g, 1.0) == COLOURS['blue'], -1).sum() > 4 * np.all(
        render_frame(g, 0.0) == COLOURS['blue'], -1).sum()

def test_captions_name_events():
    rng = np.random.default_rng(1)
    evs = random_events(rng)
    caps = video_captions(evs, rng, n=10)
    assert len(set(caps)) == 10
    for c in caps:
        named = [e for e in evs if f' {e.colour} ' in f' {c} ' and any(w in c for w in SHAPE_WORDS[e.shape])]
        assert named, f'caption {c!r} names no event of the video'
        if ', then ' in c:
            first, second = c.split(', then ')
            i = next(k for k, e in enumerate(evs) if e.colour in first
                     and any(w in first for w in SHAPE_WORDS[e.shape]))
            j = next(k for k, e in enumerate(evs) if e.colour in second
                     and any(w in second for w in SHAPE_WORDS[e.shape]))
            assert i < j, f'{c!r} must keep the order of events'

def test_toy_frames_and_captions():
    fr, caps = toy_frames(16, seed=0)
    fr2, caps2 = toy_frames(16, seed=0)
    assert fr.shape == (16, 96, 96, 3) and fr.dtype == np.uint8 and np.array_equal(fr, fr2) and caps == caps2
    ev = Event('green', 'triangle', 'moves right', 0, 4, 0.5, 0.5)
    assert frame_caption(ev, 0.0) == 'a medium green triangle on the left'
    assert frame_caption(Event('red', 'circle', 'grows', 0, 4), 1.0) == 'a big red circle in the middle'
