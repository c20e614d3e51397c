"""`glscl compare` end to end on two tiny toy runs (the second compare reads every encoding from the cache), its
one-line errors, and QB-Norm's query bank going through the same encoding cache as the test split."""
import subprocess
import sys
import shutil
import json
import pytest
import torch
import glscl.train as T
import glscl.evaluation as E                      # where the encoders that the cache calls live
from glscl.cli import main, parse_paper

SETS = dict(toy_videos=24, toy_seed=5, clip_pretrained='none', batch_size=16, max_steps=2, eval_every=0)

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "Two runs of two steps (seeds 0 and 1) on a 24-video toy world, trained through the API."
    from glscl.toyworld import make_toy_msrvtt
    from glscl.config import load_config
    tmp = tmp_path_factory.mktemp('compare')
    w = make_toy_msrvtt(tmp/'toy', n_videos=24, seed=5)
    out = []
    for seed in (0, 1):
        cfg = load_config('toy', anno_dir=str(w), video_dir=str(w/'videos'), out_dir=str(tmp/f'run{seed}'),
                          seed=seed, **SETS)
        T.train(cfg, progress=False, final_extra=False)
        out.append(tmp/f'run{seed}')
    return dict(world=w, a=out[0], b=out[1], tmp=tmp)

def cli(*args):
    return subprocess.run([sys.executable, '-c', 'from glscl.cli import main; main()', *args],
                          capture_output=True, text=True)

def no_encoding(*a, **k): raise AssertionError('encoded although the cache holds these encodings')

def test_compare_two_runs_then_from_the_cache(runs, capsys, monkeypatch):
    main(['compare', str(runs['a']), str(runs['b']/'last.pt'), '--n-boot', '300', '--quiet'])
    first = capsys.readouterr().out
    assert first.count('encoded now and cached') == 2 and 'A - B' in first
    lines = first.splitlines()
    for d in ('t2v', 'v2t'):
        for m in ('R@1', 'R@5', 'R@10', 'R@50', 'MdR', 'MnR'):
            row = next(ln for ln in lines if ln.startswith(f'{d} {m} '))
            assert row.rstrip().endswith(('better', 'worse', 'within noise')), row
    assert any(ln.startswith('A ') for ln in lines) and any(ln.startswith('B ') for ln in lines)      # both rows
    # the second compare reads both checkpoints' encodings from the cache: encoding anything would raise
    monkeypatch.setattr(E, 'encode_split', no_encoding); monkeypatch.setattr(E, 'encode_texts', no_encoding)
    main(['compare', str(runs['a']), str(runs['b']), '--n-boot', '300', '--quiet'])
    second = capsys.readouterr().out
    assert second.count('encodings from the cache') == 2
    strip = lambda s: [ln for ln in s.splitlines() if not ln.startswith(('A: ', 'B: '))]
    assert strip(second) == strip(first)                                        # deterministic for a seed


def test_compare_matches_the_library(runs):
    from glscl.cli import compare_checkpoints
    from glscl.metrics import compare, retrieval_metrics
    r = compare_checkpoints(runs['a'], runs['b'], n_boot=200, seed=3, progress=False)
    assert r['compare'] == compare(r['a']['sim'], r['b']['sim'], r['a']['caption_video'], n_boot=200, seed=3)
    assert r['compare']['t2v']['R1']['a'] == retrieval_metrics(r['a']['sim'], r['a']['caption_video'])['t2v']['R1']
    summary = json.loads((runs['a']/'summary.json').read_text())                # the run's own final evaluation agrees
    assert abs(summary['final']['metrics']['plain']['t2v']['R1'] - r['compare']['t2v']['R1']['a']) < 1e-9


def test_compare_against_the_paper(runs, capsys):
    main(['compare', str(runs['a']), '--paper', 't2v_R1=48.1', '--paper', 'v2t_MnR=10.3', '--n-boot', '300', '--quiet'])
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith('t2v R@1 '))
    assert '48.1' in row and ('inside' in row or 'outside' in row)
    assert '10.3' in next(ln for ln in out.splitlines() if ln.startswith('v2t MnR '))
    assert 'best of many test evaluations' in out
    main(['compare', str(runs['a']), '--n-boot', '100', '--quiet'])               # A alone: its intervals
    assert 't2v R@1' in capsys.readouterr().out


def test_parse_paper():
    assert parse_paper(['t2v_R1=48.1', 'v2t_MnR=10.3', 't2v_R5=73.9']) == {'t2v': {'R1': 48.1, 'R5': 73.9},
                                                                           'v2t': {'MnR': 10.3}}
    for bad in ('t2v_R2=1', 'r1=48', 't2v_R1', 't2v_R1=high'):
        with pytest.raises(ValueError, match='DIRECTION_METRIC=NUMBER'): parse_paper([bad])


def test_compare_errors_are_one_line(runs):
    (runs['tmp']/'empty').mkdir(exist_ok=True)
    # another test set: B's stored config points at a copy of the world with one test caption less
    w2 = runs['tmp']/'toy2'
    if not w2.exists():
        shutil.copytree(runs['world'], w2, ignore=shutil.ignore_patterns('videos'))
        test = (w2/'MSRVTT_JSFUSION_test.csv').read_text().splitlines(keepends=True)
        (w2/'MSRVTT_JSFUSION_test.csv').write_text(''.join(test[:-1]))
        ck = torch.load(runs['b']/'last.pt', map_location='cpu', weights_only=False)
        ck['config']['anno_dir'] = str(w2)
        (runs['tmp']/'other').mkdir(exist_ok=True)
        torch.save(ck, runs['tmp']/'other'/'last.pt')
    for args, words in [((str(runs['a']), '--paper', 't2v_R2=1'), 'DIRECTION_METRIC=NUMBER'),
                        ((str(runs['tmp']/'nothere.pt'), str(runs['b'])), 'does not exist'),
                        ((str(runs['tmp']/'empty'), str(runs['b'])), 'holds no last.pt'),
                        ((str(runs['a']), str(runs['b']), '--n-boot', '0'), 'n_boot'),
                        ((str(runs['a']), str(runs['b']), '--set', 'n_queries=4'), 'the checkpoint fixes these'),
                        ((str(runs['a']), str(runs['tmp']/'other')), 'different test sets')]:
        r = cli('compare', *args, '--quiet')
        assert r.returncode == 2 and words in r.stderr and 'Traceback' not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_querybank_goes_through_the_cache(runs, monkeypatch, tmp_path):
    model = T.model_from_checkpoint(runs['a']/'last.pt')
    r1 = T.evaluate(model, cache_dir=tmp_path, extra=True, qb_bank=50, progress=False)
    assert len(list(tmp_path.glob('bank50-train-*.pt'))) == 1 and len(list(tmp_path.glob('enc-test-*.pt'))) == 1
    monkeypatch.setattr(E, 'encode_split', no_encoding); monkeypatch.setattr(E, 'encode_texts', no_encoding)
    r2 = T.evaluate(model, cache_dir=tmp_path, extra=True, qb_bank=50, progress=False)
    assert ((r1['cached'], r2['cached']) == (False, True) and r2['metrics'] == r1['metrics']
            and 'QB-Norm' in r2['metrics'])
    monkeypatch.undo()
    n = dict(texts=0)
    real = T.encode_texts
    def counting(*a, **k): n['texts'] += 1; return real(*a, **k)
    monkeypatch.setattr(E, 'encode_texts', counting)
    T.evaluate(model, cache_dir=tmp_path, extra=True, qb_bank=40, progress=False)    # another bank size: its own file
    assert n['texts'] == 1 and len(list(tmp_path.glob('bank*-train-*.pt'))) == 2


def test_cli_tables_name_the_v2t_protocol_on_multi_caption_splits(monkeypatch, capsys):
    "glscl eval and glscl compare print under a multi-caption table which video-to-text protocol it holds (issue 24)."
    import glscl.cli as C
    from glscl.metrics import metrics_rows, v2t_note
    sim, cv = torch.rand(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    def fake(path, split=None, sets=None, extra=False, progress=True, v2t_protocol='family', trust_pickle=False):
        return dict(metrics=metrics_rows(sim, cv, v2t_protocol=v2t_protocol), sim=sim, caption_video=cv, cached=True,
                    split='test', v2t_note=v2t_note(cv, v2t_protocol), checkpoint=path)
    monkeypatch.setattr(C, 'evaluate_checkpoint', fake)
    main(['eval', '--checkpoint', 'x.pt', '--plain'])
    assert capsys.readouterr().out.splitlines()[-1].startswith("v2t: video-to-text by the family's protocol")
    main(['eval', '--checkpoint', 'x.pt', '--plain', '--v2t-protocol', 'per-caption'])
    assert 'per caption' in capsys.readouterr().out.splitlines()[-1]
    main(['compare', 'x.pt', '--n-boot', '50'])
    assert capsys.readouterr().out.splitlines()[-1].startswith("v2t: video-to-text by the family's protocol")
    sq = torch.rand(3, 3)                                     # one caption per video: nothing to say
    monkeypatch.setattr(C, 'evaluate_checkpoint', lambda *a, **k: dict(metrics=metrics_rows(sq), sim=sq,
                                                                       caption_video=torch.arange(3), cached=True,
                                                                       split='test', v2t_note='', checkpoint='y.pt'))
    main(['eval', '--checkpoint', 'y.pt', '--plain'])
    assert 'v2t:' not in capsys.readouterr().out
