"""glscl as an installed package: where presets are read from (an explicit file, the checkout, the packaged copy), where
their relative paths point without a checkout, a user's presets over the packaged ones, and a wheel built from this
repository that works from an empty folder without writing into its own package folder."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
import pytest
import glscl.config as C
import glscl.settingsfiles as S   # where the lookup lives: patched there, seen by glscl.config too
from glscl.clip import data_dir
from glscl.cli import main, course_notebooks

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def packaged(monkeypatch, tmp_path):
    """As an installed wheel sees it: no checkout, the presets packaged (the repository's settings.ini stands in for the
    copy)."""
    monkeypatch.setattr(S, 'checkout_settings', lambda: None)
    monkeypatch.setattr(S, 'packaged_settings', lambda: (ROOT/'settings.ini').resolve())
    for k in ('GLSCL_SETTINGS', 'GLSCL_DATA', 'XDG_DATA_HOME'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path/'home'))
    monkeypatch.chdir(tmp_path)
    return tmp_path

def test_lookup_order_in_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv('GLSCL_SETTINGS', raising=False); monkeypatch.delenv('GLSCL_DATA', raising=False)
    # a checkout ships no copy in glscl/
    assert C.settings_files() == [ROOT/'settings.ini'] and C.packaged_settings() is None
    monkeypatch.chdir(tmp_path)   # elsewhere: the checkout the editable install points at
    assert C.settings_path() == ROOT/'settings.ini' and data_dir() == ROOT/'data'
    assert C.load_config('toy').anno_dir == ROOT/'data'/'toy' and C.load_config('toy').out_dir == ROOT/'runs'/'toy'
    env, arg = tmp_path/'env.ini', tmp_path/'arg.ini'
    env.write_text('[a]\nbase = toy\nepochs = 3\n'); arg.write_text('[a]\nbase = toy\nepochs = 4\n')
    monkeypatch.setenv('GLSCL_SETTINGS', str(env))
    assert C.settings_files() == [env, ROOT/'settings.ini'] and C.load_config('a').epochs == 3
    assert C.settings_files(arg) == [arg, ROOT/'settings.ini'] and C.load_config('a', arg).epochs == 4
    assert 'presets from' in C.describe_settings() and str(env) in C.describe_settings()
    monkeypatch.setenv('GLSCL_SETTINGS', str(tmp_path/'nope.ini'))
    with pytest.raises(FileNotFoundError,
                       match=r'nope\.ini not found \(named by \$GLSCL_SETTINGS\): fix the path or unset'):
        C.load_config('toy')

def test_packaged_presets_put_relative_paths_under_the_data_home(packaged, monkeypatch):
    home = packaged/'home'/'.local'/'share'/'glscl'
    assert C.data_home() == home and data_dir() == home                  # the platform's user data folder (Linux here)
    toy = C.load_config('toy')
    assert (toy.anno_dir, toy.video_dir, toy.frame_cache, toy.out_dir) == (home/'toy', home/'toy'/'videos',
                                                                           home/'toy'/'frame_cache', home/'runs'/'toy')
    monkeypatch.setenv('XDG_DATA_HOME', str(packaged/'xdg'))
    assert C.data_home() == packaged/'xdg'/'glscl'
    monkeypatch.setenv('GLSCL_DATA', str(packaged/'d'))
    toy = C.load_config('toy', out_dir='myrun')                          # an override is relative to the current folder
    assert (toy.anno_dir, toy.out_dir, data_dir()) == (packaged/'d'/'toy', packaged/'myrun', packaged/'d')
    assert C.load_config('msrvtt-vitb32').anno_dir == packaged/'d'/'msrvtt'/'annotations'
    assert 'packaged with glscl; its relative paths under' in C.describe_settings()
    with pytest.raises(FileNotFoundError, match="course's notebooks live in a glscl repository checkout"):
        course_notebooks()

def test_user_presets_over_the_packaged_ones(packaged):
    mine = packaged/'mine'/'my.ini'; mine.parent.mkdir()
    mine.write_text('[toy]\nbase = toy\nbatch_size = 8\n\n[quick]\nbase = toy\nepochs = 1\nout_dir = runs/quick\n')
    assert C.list_presets(mine)[:2] == ['toy', 'quick'] and 'msrvtt-vitb32' in C.list_presets(mine)
    q, toy = C.load_config('quick', mine), C.load_config('toy')
    assert (q.batch_size, q.epochs, q.lr, q.lim_heads) == (8, 1, toy.lr, toy.lim_heads)
    assert q.out_dir == mine.parent/'runs'/'quick'                       # set in the user's file: next to it
    assert q.anno_dir == mine.parent/'data'/'toy'   # packaged key: under the data home, data/ beside the file
    bad = packaged/'bad.ini'; bad.write_text('[quick]\nbase = toy\nwarmup = 2\n')
    with pytest.raises(ValueError, match=r"warmup = 2\.0: must be in \[0, 1\); set in .*bad\.ini \[quick\]"):
        C.load_config('quick', bad)
    (packaged/'self.ini').write_text('[zz]\nbase = zz\n')
    with pytest.raises(KeyError, match=r"preset 'zz' not in .*settings\.ini \(the base of \[zz\] in .*self\.ini\)"):
        C.load_config('zz', packaged/'self.ini')

def test_cli_settings_flag(packaged, monkeypatch):
    mine = packaged/'my.ini'; mine.write_text('[quick]\nbase = toy\nbatch_size = 8\n')
    for argv in (['presets', 'quick', '--settings', str(mine)], ['--settings', str(mine), 'presets', 'quick'],
                 ['presets', f'--settings={mine}', 'quick']):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf): main(argv)
        out = buf.getvalue().splitlines()
        assert (out[0].startswith(f'presets from {mine} ($GLSCL_SETTINGS or --settings), then ')
                and 'batch_size       = 8' in out)
        assert 'GLSCL_SETTINGS' not in os.environ                       # only for that call
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        main(['presets', '--settings', str(packaged/'none.ini')])
    assert e.value.code == 2
    monkeypatch.setattr(S, 'packaged_settings', lambda: None)   # an install without presets: a message with the fix
    with pytest.raises(FileNotFoundError, match="no settings.ini in the installed package .*GLSCL_SETTINGS"):
        C.load_config('toy')

# --- a wheel, installed on its own, used from an empty folder ---------------------------------------------------------

def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob('*')}

def test_wheel_works_outside_the_checkout(tmp_path):
    """Build the sdist and a wheel from this repository, install the wheel (no dependencies, no index) into a new venv
    that sees the test venv's packages, and run `glscl presets`, `glscl toy` and two training steps from an empty folder
    (the last two on a 24-video toy world, set by a user's presets file that bases the packaged [toy])."""
    pytest.importorskip('setuptools', reason='building the wheel needs setuptools>=64 in .venv')
    src, dist = tmp_path/'src', tmp_path/'dist'
    src.mkdir()
    for f in ('pyproject.toml', 'setup.py', 'MANIFEST.in', 'settings.ini', 'README.md', 'LICENSE'):
        shutil.copy2(ROOT/f, src/f)
    shutil.copytree(ROOT/'glscl', src/'glscl', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    # sdist, then a wheel from it
    try:
        import build  # noqa: F401  (is the build frontend installed?)
        cmd = [sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(dist), str(src)]
    except ImportError:
        cmd = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', str(dist), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=src)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    whl, = dist.glob('glscl-*.whl')
    import zipfile
    import tarfile
    # the same file, packaged
    assert zipfile.ZipFile(whl).read('glscl/settings.ini') == (ROOT/'settings.ini').read_bytes()
    for sd in dist.glob('glscl-*.tar.gz'): assert any(n.endswith('/settings.ini') for n in tarfile.open(sd).getnames())

    venv = tmp_path/'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    py = venv/'bin'/'python'
    purelib = Path(subprocess.run([str(py), '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
    # torch & co from .venv, after the wheel's glscl
    (purelib/'glscl-test-deps.pth').write_text('\n'.join(sorted(ours)) + '\n')
    r = subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', str(whl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    pkg = purelib/'glscl'
    assert (pkg/'settings.ini').is_file()

    home, data, work = tmp_path/'home', tmp_path/'data', tmp_path/'work'
    home.mkdir(); work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(('GLSCL_', 'XDG_', 'VIRTUAL_ENV', 'PYTHON'))}
    env.update(HOME=str(home), MPLCONFIGDIR=str(tmp_path/'mpl'), PATH=f"{venv/'bin'}{os.pathsep}{env.get('PATH', '')}")
    def glscl(*args, data_env=True):
        e = {**env, **({'GLSCL_DATA': str(data)} if data_env else {})}
        r = subprocess.run([str(venv/'bin'/'glscl'), *args], capture_output=True, text=True, env=e, cwd=work)
        assert r.returncode == 0, f"glscl {' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        return r.stdout
    before = _tree(pkg)

    out = glscl('presets', data_env=False)   # the wheel's glscl (not the editable checkout's) reads
    # its packaged presets; with no checkout and no GLSCL_DATA their relative paths go to the user data folder
    assert out.splitlines()[
        0] == (f"presets from {pkg/'settings.ini'} (packaged with glscl; its relative paths under "
               f"{home/'.local/share/glscl'})")
    assert 'toy ' in out and 'msrvtt-vitb32 ' in out
    # The toy world and the training run on a user's presets file over the packaged ones (GLSCL_SETTINGS): [toy] with
    # base = toy and a 24-video world, so that the test takes one minute, not three; every other key is the packaged
    # toy's.
    user = tmp_path/'user'/'my.ini'; user.parent.mkdir()
    user.write_text('[toy]\nbase = toy\ntoy_videos = 24\nbatch_size = 16\n')
    env['GLSCL_SETTINGS'] = str(user)
    assert f"toy world ready in {data/'toy'}" in glscl('toy')         # the packaged path, under GLSCL_DATA
    assert len(list((data/'toy'/'videos').glob('*.mp4'))) == 24         # the user's size
    sets = ['--set', 'max_steps=2']
    tiny = data_dir()/'glscl-tiny-toy.pt'   # the checkout's tiny CLIP, if already pretrained
    from glscl.tinyclip import _recipe
    import torch
    if tiny.is_file() and torch.load(tiny, map_location='cpu', weights_only=True).get('glscl_recipe') == _recipe():
        shutil.copy2(tiny, data/tiny.name)   # the real toy preset, without 3 minutes of pretraining
    else: sets += ['--set', 'clip_pretrained=none']   # no cache to copy: a randomly initialised tiny CLIP
    out = glscl('train', '--preset', 'toy', *sets, '--quiet')
    assert 'final checkpoint, step 2' in out and f"run folder: {data/'runs'/'toy'}" in out
    assert (data/'runs'/'toy'/'last.pt').is_file()
    assert _tree(pkg) == before, "glscl wrote into its installed package folder"
    assert list(work.iterdir()) == [] and not (home/'.local'/'share'/'glscl').exists()
