"The glscl console script: presets listed and shown, clear exit on a bad preset, the toy world made on request."
import subprocess
import sys
import json
import pytest
from glscl.cli import main

def run(*args):
    return subprocess.run([sys.executable, '-c', 'from glscl.cli import main; main()', *args],
                          capture_output=True, text=True)

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
    assert ((tmp_path/'toy'/'MSRVTT_JSFUSION_test.csv').exists()
            and len(list((tmp_path/'toy'/'videos').glob('*.mp4'))) == 240)

def test_train_and_eval_end_to_end(tmp_path):
    from glscl.toyworld import make_toy_msrvtt
    w = make_toy_msrvtt(tmp_path/'toy', n_videos=24, seed=5)
    sets = ['--set', f'anno_dir={w}', '--set', f'video_dir={w}/videos', '--set', 'toy_videos=24', '--set', 'toy_seed=5',
            '--set', 'clip_pretrained=none', '--set', 'batch_size=16', '--set', 'max_steps=2', '--set',
            f'out_dir={tmp_path}/run']
    r = run('train', '--preset', 'toy', *sets, '--quiet')
    assert r.returncode == 0, r.stderr
    assert 'final checkpoint, step 2' in r.stdout and 'best checkpoint' in r.stdout and 't2v' in r.stdout
    assert [json.loads(ln)['step'] for ln in (tmp_path/'run'/'log.jsonl').read_text().splitlines()][:2] == [1, 2]
    r = run('eval', '--checkpoint', str(tmp_path/'run'/'last.pt'), '--quiet')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert (any(ln.startswith('plain') for ln in lines) and any(ln.startswith('DSL') for ln in lines)
            and any(ln.startswith('QB-Norm') for ln in lines))
    r2 = run('eval', '--checkpoint', str(tmp_path/'run'/'last.pt'), '--quiet', '--plain')
    assert 'encodings from the cache' in r2.stdout
    assert [ln for ln in r2.stdout.splitlines() if ln.startswith('plain')] == [ln for ln in lines
                                                                               if ln.startswith('plain')]
    r = run('eval', '--checkpoint', str(tmp_path/'run'/'last.pt'), '--set', 'n_queries=4')
    assert r.returncode == 2 and 'the checkpoint fixes these' in r.stderr and 'Traceback' not in r.stderr
    r = run('train', '--preset', 'toy', *sets, '--resume', str(tmp_path/'run'/'last.pt'), '--set',
            'max_steps=3', '--quiet')
    assert r.returncode == 0 and 'step 3' in r.stdout, r.stderr

@pytest.mark.parametrize('args, words', [
    (['train', '--preset', 'toy', '--set', 'no_such_key=1'], 'unknown setting'),
    (['train', '--preset', 'toy', '--set', 'lr'], 'key=value'),
    (['train', '--preset', 'toy', '--set', 'epochs=two'], "setting epochs = 'two'"),
    (['eval', '--checkpoint', '/nonexistent/last.pt'], 'does not exist'),
])
def test_train_eval_failures_are_one_line(args, words):
    r = run(*args)
    assert (r.returncode == 2 and words in r.stderr and 'Traceback' not in r.stderr
            and len(r.stderr.strip().splitlines()) == 1)
