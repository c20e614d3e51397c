"""Bad input (issue 14): nothing of the user's is lost, one bad number poisons nothing, nothing is cut or coerced
silently, skips are counted wherever loading happens, the CLI fails in one line, and nothing outside the repository
changes. Each test goes through the public API or the CLI and failed on the code before the fix."""
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from glscl.config import load_config, SettingError

from glscl.data import (read_msrvtt, tokenize, check_caption, collate_videos, count_skips, VideoDataset,
                        MSRVTT_FILES)
from glscl.toyworld import make_toy_msrvtt
from glscl.model import GLSCL, mean_pooling_similarity
from conftest import cli_here
from glscl.losses import contrastive_loss
from glscl.presetdata import dataset_from_config
import glscl.train as T

ROOT = Path(__file__).resolve().parents[1]
NB_META = dict(kernelspec=dict(name='python3', language='python', display_name='Python 3'),
               language_info=dict(name='python'))

def cli(*args, env=None, cwd=None):
    "The console script in a process of its own."
    return subprocess.run([sys.executable, '-c', 'from glscl.cli import main; main()', *args],
                          capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_toy_msrvtt(tmp_path_factory.mktemp('bad')/'toy', n_videos=24, seed=3)

@pytest.fixture
def cfg(world, tmp_path):
    return load_config('toy', anno_dir=world, video_dir=world/'videos', toy_videos=24, clip_pretrained='none',
                       batch_size=16, eval_batch_size=8, epochs=1, out_dir=tmp_path/'run')

# --- data loss: the toy writer removes only what it wrote ----------------------------------------------------------

def test_toy_writer_refuses_a_folder_with_other_files(tmp_path):
    x = tmp_path/'x'; x.mkdir(); (x/'keep.txt').write_text('hi')
    r = cli('toy', '--out', str(x))
    assert r.returncode == 2 and 'keep.txt' in r.stderr and 'Traceback' not in r.stderr
    assert (x/'keep.txt').read_text() == 'hi' and sorted(p.name for p in x.iterdir()) == ['keep.txt']
    with pytest.raises(FileExistsError, match='removes only what it wrote'): make_toy_msrvtt(x, 8, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x']                  # no temporary folder left behind

def test_toy_overwrite_replaces_only_a_toy_world(tmp_path, capsys):
    w = make_toy_msrvtt(tmp_path/'w', 8)
    with pytest.raises(FileExistsError, match='overwrite'): make_toy_msrvtt(w, 9)
    code, err = cli_here(capsys, 'toy', '--out', str(w))   # the preset's 240 videos: other parameters
    assert code == 2 and '--overwrite' in err
    make_toy_msrvtt(w, 9, overwrite=True)
    assert len(list((w/'videos').glob('*.mp4'))) == 9
    (w/'notes.md').write_text('mine')   # now the folder holds something of the user's
    with pytest.raises(FileExistsError, match='notes.md'): make_toy_msrvtt(w, 10, overwrite=True)
    assert (w/'notes.md').read_text() == 'mine' and len(list((w/'videos').glob('*.mp4'))) == 9

def test_interrupted_toy_writer_keeps_the_old_world_and_its_temp_is_cleaned(tmp_path, monkeypatch):
    import glscl.toyworld as TW
    w = make_toy_msrvtt(tmp_path/'w', 8)
    before = sorted(p.name for p in (w/'videos').iterdir())
    calls, orig = [], TW.write_video
    def crash(path, frames, fps, crf=23):   # Ctrl-C while the third video is written
        calls.append(path)
        if len(calls) == 3: raise KeyboardInterrupt
        return orig(path, frames, fps, crf)
    monkeypatch.setattr(TW, 'write_video', crash)
    with pytest.raises(KeyboardInterrupt): make_toy_msrvtt(w, 9, overwrite=True)
    monkeypatch.setattr(TW, 'write_video', orig)
    assert (sorted(p.name for p in (w/'videos').iterdir()) == before
            and json.loads((w/'toy_events.json').read_text())['params']['n_videos'] == 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['w']
    # a writer killed with -9
    stale = tmp_path/'.toy-w.999999999.new-abc'; stale.mkdir(); (stale/'x').write_text('half')
    make_toy_msrvtt(w, 9, overwrite=True)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ['w']

def test_toy_to_an_unwritable_place_is_one_line(tmp_path, capsys):
    (tmp_path/'file').write_text('')
    code, err = cli_here(capsys, 'toy', '--out', str(tmp_path/'file'/'toy'))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path/'file') in err and '.toy-' not in err

# --- one bad number poisons nothing ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def model():
    return GLSCL(load_config('toy', clip_pretrained='none')).eval()

def test_mean_pooling_ignores_padded_slots():
    torch.manual_seed(0)
    eos, frames = torch.randn(3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ref = mean_pooling_similarity(eos, frames, mask)
    frames[0, 2:] = float('nan'); frames[0, 3, 0] = float('inf')
    got = mean_pooling_similarity(eos, frames, mask)
    assert torch.isfinite(got).all() and torch.allclose(got, ref)

def test_model_similarity_names_the_bad_text_and_video(model):
    torch.manual_seed(0)
    K, D = model.cfg.n_queries, model.clip.embed_dim
    text = dict(eos=torch.randn(3, D), query=torch.randn(3, K, D))
    video = dict(frames=torch.randn(2, 4, D), mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool),
                 query=torch.randn(2, K, D))
    ref = model.similarity(text, video)
    video['frames'][0, 3] = float('nan')                                        # a padded slot: never read
    assert torch.allclose(model.similarity(text, video), ref)
    bad = dict(text, eos=text['eos'].clone()); bad['eos'][1, 0] = float('nan')
    with pytest.raises(ValueError, match=r'text.*indices \[1\]'): model.similarity(bad, video)
    video['frames'][1, 2, 5] = float('inf')
    with pytest.raises(ValueError, match=r'\(video, slot\) = \[\[1, 2\]\]'): model.similarity(text, video)

def test_nan_pixels_are_named_before_the_losses(model):
    frames = torch.zeros(2, 3, 3, model.cfg.image_size, model.cfg.image_size)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    frames[0, 2] = float('nan')                                                  # padded: fine
    out = model.encode_video(frames, mask)
    assert torch.isfinite(out['frames']).all() and torch.isfinite(out['query']).all()
    frames[1, 0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'pixels.*\[\[1, 0\]\]'): model.encode_video(frames, mask)

def test_checkpoint_with_non_finite_weights_is_refused(cfg, tmp_path):
    m = GLSCL(cfg)
    with torch.no_grad(): next(m.lim.parameters()).view(-1)[0] = float('nan')
    p = T.save_checkpoint(tmp_path/'nan.pt', m)
    with pytest.raises(ValueError, match=r'non-finite weights .*lim\.'): T.model_from_checkpoint(p)
    with pytest.raises(ValueError, match='non-finite'): T.load_checkpoint(p, GLSCL(cfg))

def test_infonce_on_one_pair_warns():
    with pytest.warns(RuntimeWarning, match='batch of one pair'):
        assert contrastive_loss(torch.randn(1, 1), torch.tensor(0.0)).item() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        contrastive_loss(torch.randn(2, 2), torch.tensor(0.0))                  # two pairs: no warning
    with pytest.raises(ValueError, match='empty'): contrastive_loss(torch.zeros(0, 0), torch.tensor(0.0))

# --- silent truncation and coercion ----------------------------------------------------------------------------------

def copy_annos(world, dst):
    dst.mkdir()
    for f in MSRVTT_FILES.values(): (dst/f).write_bytes((world/f).read_bytes())
    return dst

def test_unquoted_comma_in_a_test_caption_is_kept_whole(world, tmp_path):
    a = copy_annos(world, tmp_path/'a')
    lines = (a/MSRVTT_FILES['test']).read_text().splitlines()
    lines[1] = 'ret0,msr0,' + lines[1].split(',')[2] + ',a red ball, then a blue box, rises'
    (a/MSRVTT_FILES['test']).write_text('\n'.join(lines) + '\n')
    assert read_msrvtt(a, 'test')[0][1] == 'a red ball, then a blue box, rises'
    lines[2] = 'ret1,msr1'   # a field missing: named, not guessed
    (a/MSRVTT_FILES['test']).write_text('\n'.join(lines) + '\n')
    with pytest.raises(ValueError, match=r'JSFUSION_test\.csv, line 3: 2 fields'): read_msrvtt(a, 'test')

def test_extra_field_in_the_train_list_is_an_error(world, tmp_path):
    a = copy_annos(world, tmp_path/'a')
    (a/MSRVTT_FILES['train']).write_text('video_id\nvideo0\nvideo1,extra\n')
    with pytest.raises(ValueError, match=r'train\.9k\.csv, line 3: 2 fields'): read_msrvtt(a, 'train')

@pytest.mark.parametrize('cap', ['&nbsp;', '\u3000 \t', '\u200b\u200b', '&amp;nbsp;', '\x00'])
def test_captions_empty_after_cleaning(world, tmp_path, cap):
    with pytest.raises(ValueError, match='empty after cleaning'): tokenize(['a red ball', cap])
    a = copy_annos(world, tmp_path/'a')
    d = json.loads((a/MSRVTT_FILES['data']).read_text()); d['sentences'][5]['caption'] = cap
    (a/MSRVTT_FILES['data']).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"MSRVTT_data\.json, sen_id 5 .*empty after cleaning"): read_msrvtt(a, 'train')
    assert check_caption('a ball…', 'x') == 'a ball…'

def test_test_video_missing_from_the_data_json(world, tmp_path):
    a = copy_annos(world, tmp_path/'a')
    d = json.loads((a/MSRVTT_FILES['data']).read_text())
    test_vid = read_msrvtt(a, 'test')[0][0]
    d['videos'] = [v for v in d['videos'] if v['video_id'] != test_vid]
    (a/MSRVTT_FILES['data']).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf"not in .*MSRVTT_data\.json: \['{test_vid}'\]"): read_msrvtt(a, 'test')

def write_ini(tmp_path, body):
    p = tmp_path/'settings.ini'
    p.write_text((ROOT/'settings.ini').read_text() + '\n' + body)
    return p

@pytest.mark.parametrize('line,key,why', [('lr = -1', 'lr', r'\(0, inf\)'), ('epochs = 1.5', 'epochs', 'whole number'),
                                          ('lim_dropout = nan', 'lim_dropout', r'\[0, 1\)'),
                                          ('max_words = 100', 'max_words', r'\[3, 77\]'),
                                          ('official_compat = maybe', 'official_compat', 'boolean'),
                                          ('adam_beta2 = 1', 'adam_beta2', r'\[0, 1\)'),
                                          ('batch_size = 0', 'batch_size', 'must be in'),
                                          ('seed = -1', 'seed', 'must be in'),
                                          ('precision = fp16', 'precision', 'released-fp16')])
def test_every_preset_value_is_checked_at_load(tmp_path, line, key, why):
    p = write_ini(tmp_path, f'[bad]\nbase = toy\n{line}\n')
    with pytest.raises(SettingError, match=rf"setting {key} = .*{why}.*settings\.ini \[bad\]") as e:
        load_config('bad', p)
    assert e.value.key == key

def test_inherited_bad_value_names_its_own_section(tmp_path):
    p = write_ini(tmp_path, '[parent]\nbase = toy\nwarmup = 2\n[child]\nbase = parent\nlr = 1e-4\n')
    with pytest.raises(SettingError,
                       match=r"warmup = 2\.0: must be in \[0, 1\); set in .*\[parent\] \(read by preset \[child\]\)"):
        load_config('child', p)

def test_no_lossy_coercion_in_overrides_and_configs():
    assert load_config('toy', epochs='3').epochs == 3 and load_config('toy', epochs=2.0).epochs == 2
    with pytest.raises(SettingError, match='whole number'): load_config('toy', max_steps=2.5)
    with pytest.raises(SettingError, match='not a number'): load_config('toy', batch_size=True)
    c = load_config('toy')
    with pytest.raises(SettingError, match='whole number'): c.replace(eval_every='1.5')
    with pytest.raises(SettingError, match='toy world needs at least 4'): c.replace(toy_videos=2)

def test_malformed_settings_file(tmp_path):
    p = tmp_path/'settings.ini'; p.write_text('[toy]\nlr = 1\nlr = 2\n')
    with pytest.raises(ValueError, match=r'settings\.ini is not a valid settings file'): load_config('toy', p)

# --- counted skips, wherever the loading happens ---------------------------------------------------------------------

@pytest.fixture
def broken(world, tmp_path):
    import shutil
    w = tmp_path/'w'; shutil.copytree(world, w)
    (w/'videos'/'video0.mp4').write_bytes(b'not a video'); (w/'videos'/'video1.mp4').write_bytes(b'')
    return w

def test_skips_counted_with_workers_and_all_bad_batches(broken, caplog):
    ds = VideoDataset(['video0', 'video1', 'video2', 'video3'], broken/'videos', max_frames=4, image_size=32)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_videos, num_workers=2)
    sizes = []
    for b in dl:
        count_skips(ds, b, dl); sizes.append(b['size'])
    assert sizes == [0, 2] and ds.n_skipped == 2   # the all-bad batch is a batch of size 0
    ds0 = VideoDataset(['video0', 'video2'], broken/'videos', max_frames=4, image_size=32)
    dl0 = torch.utils.data.DataLoader(ds0, batch_size=2, collate_fn=collate_videos)
    for b in dl0: count_skips(ds0, b, dl0)
    assert ds0.n_skipped == 1                                                    # in-process: counted once, not twice

def test_training_skips_reach_the_log_with_workers(cfg, broken):
    c = cfg.replace(anno_dir=broken, video_dir=broken/'videos', max_steps=3, max_skip_frac=0.2, num_workers=1)
    s = T.train(c, progress=False, final_extra=False)
    assert s['skipped_videos'] == ['video0', 'video1']
    skips = [r for r in T.read_log(c.out_dir/'log.jsonl') if r['kind'] == 'skip']
    assert sorted(r['video'] for r in skips) == ['video0', 'video1'] and max(r['skipped'] for r in skips) == 2

def test_frame_features_count_unreadable_videos(cfg, broken, caplog):
    c = cfg.replace(anno_dir=broken, video_dir=broken/'videos', freeze_visual=True, num_workers=1)
    ds = dataset_from_config(c, 'train')
    with caplog.at_level(logging.WARNING): f = T.frame_features(GLSCL(c), ds, c, progress=False)
    assert 'video0' not in f and 'video1' not in f and len(f) == len(ds.video_ids) - 2
    assert 'frame features: 2 of 20 videos cannot be read' in caplog.text

# --- the command line: one clear line, never a traceback -------------------------------------------------------------

@pytest.mark.parametrize('args,words', [(('course', '--preset', 'nope'), "preset 'nope' not in"),
                                        (('train', '--set', 'lr=-3'), 'setting lr = -3.0'),
                                        (('train', '--set', 'nope=1'), 'unknown setting'),
                                        (('course', '--only', 'zzz'), 'no course notebook matches'),
                                        (('eval', '--checkpoint', '/nonexistent/last.pt'), 'does not exist')])
def test_cli_failures_are_one_line(args, words, capsys):
    code, err = cli_here(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err

def test_course_runner_reports_a_failing_notebook_in_one_line(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('preset = "toy"\nfig_dir = None',
                                                                   metadata={'tags': ['parameters']}),
                                         nbformat.v4.new_code_cell('1 / 0')], metadata=NB_META)
    nbformat.write(nb, tmp_path/'boom.ipynb')
    from glscl.cli import run_notebook
    with pytest.raises(
        RuntimeError, match=r"boom\.ipynb failed in cell \d+: ZeroDivisionError: division by zero .*executed notebook"):
        run_notebook(tmp_path/'boom.ipynb', tmp_path/'out')

def test_corrupted_tiny_clip_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    import glscl.tinyclip as C
    p = tmp_path/'tiny.pt'; p.write_bytes(b'\x80\x04garbage')
    monkeypatch.setattr(C, 'pretrain_tiny_clip', lambda **kw: {'w': torch.zeros(2)})  # the rebuild itself takes minutes
    with caplog.at_level(logging.WARNING): assert C.tiny_clip_checkpoint(p) == p
    assert 'cannot be read' in caplog.text and str(p) in caplog.text
    assert torch.load(p, weights_only=True)['glscl_recipe']['config'] == C.TINY_CLIP

# --- the user's machine stays as it was -------------------------------------------------------------------------------

def test_notebooks_run_in_this_python_without_writing_outside_the_repository(tmp_path):
    """With an empty home and Jupyter paths, papermill still finds this venv's Python, and nothing is written to the
    home."""
    home = tmp_path/'home'; home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(('JUPYTER', 'IPYTHON'))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home/'.local/share'), XDG_CONFIG_HOME=str(home/'.config'),
               XDG_CACHE_HOME=str(home/'.cache'), IPYTHONDIR=str(tmp_path/'ipython'), MPLCONFIGDIR=str(tmp_path/'mpl'))
    code = (f"import nbformat, sys; from glscl.cli import run_notebook, course_kernel; META = {NB_META!r}\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('preset=1\\nfig_dir=None', "
            "metadata={'tags': ['parameters']}),"
            "nbformat.v4.new_code_cell('import sys; open(\"exe.txt\", \"w\").write(sys.executable)')], metadata=META)\n"
            f"nbformat.write(nb, {str(tmp_path/'n.ipynb')!r}); run_notebook({str(tmp_path/'n.ipynb')!r}, "
            f"{str(tmp_path/'out')!r}); print(course_kernel())")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path((tmp_path/'exe.txt').read_text()).resolve() == Path(sys.executable).resolve()
    written = [str(p.relative_to(home)) for p in home.rglob('*') if p.is_file()]
    assert written == [], written

def test_makefile_installs_no_kernel_for_the_user():
    venv_rule = (ROOT/'Makefile').read_text().split('$(STAMP): pyproject.toml', 1)[1].split('\n\n', 1)[0]
    assert '--user' not in venv_rule and 'ipykernel install --sys-prefix' in venv_rule
