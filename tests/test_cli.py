"The glscl console script: presets listed and shown, clear exit on a bad preset, the toy world made on request."
import subprocess, sys, json
from glscl.cli import main

def run(*args):
    return subprocess.run([sys.executable, '-c', 'from glscl.cli import main; main()', *args], capture_output=True, text=True)

def test_presets_list_and_show():
    r = run('presets')
    assert r.returncode == 0 and 'msrvtt-vitb32' in r.stdout and 'toy' in r.stdout
    r = run('presets', 'msrvtt-vitb32')
    assert r.returncode == 0 and 'gim_temp         = 3.0' in r.stdout and 'batch_size       = 128' in r.stdout

def test_bad_preset_exits_2_with_message():
    r = run('presets', 'nope')
    assert r.returncode == 2 and 'presets are' in r.stderr

def test_toy_subcommand(tmp_path, capsys):
    main(['toy', '--out', str(tmp_path/'toy')])
    assert 'toy world ready' in capsys.readouterr().out
    assert (tmp_path/'toy'/'MSRVTT_JSFUSION_test.csv').exists() and len(list((tmp_path/'toy'/'videos').glob('*.mp4'))) == 240
