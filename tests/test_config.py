"Run presets: settings.ini -> typed Config, base chains, overrides and errors."
import pathlib
from dataclasses import dataclass, fields
import pytest
from glscl.config import load_config, list_presets, Config
from glscl.config import setting, keys_affecting, keys_free_of, EFFECTS, LIMITS, CHOICES, SettingError
from glscl.cli import course_notebooks

def test_presets_exist_and_load(root):
    names = list_presets()
    assert {'toy', 'msrvtt-vitb32'} <= set(names)
    for n in names:
        c = load_config(n)
        assert isinstance(c, Config) and c.name == n

def test_paper_recipe_values():
    c = load_config('msrvtt-vitb32')
    assert (c.epochs, c.batch_size, c.lr, c.coef_lr, c.weight_decay) == (5, 128, 1e-4, 1e-3, 0.2)
    assert (c.adam_beta1, c.adam_beta2, c.adam_eps, c.warmup, c.grad_clip) == (0.9, 0.98, 1e-6, 0.1, 1.0)
    assert (c.max_words, c.max_frames, c.fps, c.image_size) == (32, 12, 1.0, 224)
    assert (c.gim_temp, c.n_queries, c.lim_layers, c.lim_ff_dim,
            c.lim_heads, c.lim_dropout) == (3.0, 8, 3, 2048, 8, 0.1)
    assert (c.sim_lambda, c.idl_alpha, c.icl_beta, c.icl_target, c.seed) == (0.5, 1e-4, 0.02, 0.75, 42)
    assert c.share_queries is True and c.share_decoder is True
    assert (c.clip_model, c.clip_pretrained, c.icl_norm) == ('ViT-B-32', 'openai', 'k')
    # the released code's own ways (RELEASED_RECIPE.md), all on in the paper's preset
    assert (c.precision, c.optimizer, c.weight_decay_rule, c.frame_sampling, c.ddp_gather) == \
           ('released-fp16', 'bertadam', 'released', 'released', 'released')
    assert c.official_compat and c.freeze_conv1 and not c.freeze_visual and c.augment == 'rand-m7-n4-mstd0.5-inc1'
    assert c.eval_every == 150

def test_corrected_preset_differs_only_in_the_loose_spots():
    rel, fix = load_config('msrvtt-vitb32').to_dict(), load_config('msrvtt-vitb32-amp').to_dict()
    diff = {k for k in rel if rel[k] != fix[k]} - {'name', 'description', 'out_dir'}
    assert diff == {'precision', 'optimizer', 'weight_decay_rule', 'official_compat', 'ddp_gather', 'frame_sampling'}
    assert (fix['precision'], fix['optimizer'], fix['official_compat'],
            fix['ddp_gather']) == ('amp-bf16', 'adamw', False, 'exact')

def test_choices_are_checked():
    with pytest.raises(ValueError, match="'fp16' is now 'released-fp16'"): load_config('toy', precision='fp16')
    for k in ('precision', 'optimizer', 'weight_decay_rule', 'frame_sampling', 'ddp_gather', 'head'):
        with pytest.raises(ValueError, match=f"setting {k} = 'nope': use one of"): load_config('toy', **{k: 'nope'})

def test_base_chain_and_types():
    toy, paper = load_config('toy'), load_config('msrvtt-vitb32')
    assert toy.gim_temp == paper.gim_temp and toy.clip_model == 'glscl-tiny' and toy.image_size == 64
    assert isinstance(toy.anno_dir, pathlib.Path) and toy.anno_dir.is_absolute()
    assert load_config('msrvtt-vitb16').clip_model == 'ViT-B-16'

def test_overrides_and_replace():
    c = load_config('toy', batch_size='7', share_queries='false')
    assert c.batch_size == 7 and c.share_queries is False
    assert c.replace(epochs='2').epochs == 2 and c.replace(clip_pretrained='none').clip_pretrained is None

def _write(tmp_path, text):
    p = tmp_path/'settings.ini'; p.write_text(text); return p

def test_errors(tmp_path):
    with pytest.raises(KeyError, match='presets are'): load_config('nope')
    with pytest.raises(ValueError, match='not a boolean'): load_config('toy', share_queries='maybe')
    with pytest.raises(ValueError, match='batch_size = .lots.: is not a number'): load_config('toy', batch_size='lots')
    with pytest.raises(ValueError, match='unknown setting'): load_config('toy', batchsize=3)
    p = _write(tmp_path, '[a]\nbase = b\n[b]\nbase = a\n')
    with pytest.raises(ValueError, match='cycle'): load_config('a', p)
    p = _write(tmp_path, '[a]\nepochs = 3\n')
    with pytest.raises(ValueError, match='missing setting'): load_config('a', p)
    with pytest.raises(FileNotFoundError): load_config('toy', tmp_path/'missing.ini')

def test_course_notebooks_in_order():
    names = [p.name for p in course_notebooks()]
    assert names == sorted(names) and names[0].startswith('00')

# --- each setting declared once: its range, its choices and what it affects, on the Config field ----------------------

def test_every_field_is_declared_with_what_it_affects():
    undeclared = [f.name for f in fields(Config) if 'affects' not in f.metadata]
    assert not undeclared, f"declare these with setting(..., affects=...): {undeclared}"
    assert LIMITS == {f.name: f.metadata['range'] for f in fields(Config) if f.metadata['range']}
    assert CHOICES == {f.name: f.metadata['choices'] for f in fields(Config) if f.metadata['choices']}
    assert LIMITS['seed'] == (0, 2**32 - 1, False, False) and LIMITS['lim_dropout'] == (0, 1, False, True)

def test_the_old_lists_are_derived_from_the_declarations():
    import glscl.train as T
    import glscl.cli as cli
    import glscl.clip as clip
    import glscl.model as model
    import glscl.video as video
    import glscl.datasets as ds
    assert (T.ENCODING_KEYS == keys_affecting('encodings') and 'gim_temp' not in T.ENCODING_KEYS
            and 'sim_lambda' in T.ENCODING_KEYS)
    assert (T.RESUME_FREE_KEYS == keys_free_of('training')
            and {'out_dir', 'max_steps', 'grad_cache_chunk'} <= set(T.RESUME_FREE_KEYS))
    assert cli.EVAL_SETTABLE == keys_affecting('eval_override') and 'lr' not in cli.EVAL_SETTABLE
    assert (clip.PRECISIONS, model.HEADS, video.FRAME_RULES) == (CHOICES['precision'], CHOICES['head'],
                                                                 CHOICES['frame_sampling'])
    assert set(T.OPTIMIZERS) == set(CHOICES['optimizer']) and set(ds.BENCHMARKS) == set(CHOICES['dataset'])
    import glscl.index as I                        # the index id keys on the declared settings, read from them
    assert I.ID_KEYS == keys_affecting('index') and {'clip_model', 'sim_lambda', 'gim_temp'} <= set(I.ID_KEYS)

def test_what_changes_an_encoding_changes_the_run():
    assert set(keys_affecting('encodings')) | set(keys_affecting('index')) <= set(keys_affecting('training'))
    assert set(keys_free_of('training')) == set(f.name for f in fields(Config)) - set(keys_affecting('training'))

@dataclass(frozen=True)
class Wider(Config):
    "A new setting in one line: its range and its effects are checked and derived with no other file touched."
    new_knob: int = setting(2, affects='training encodings', range='[1, 8]')
    new_mode: str = setting('a', affects='', choices=('a', 'b'))

def test_a_new_setting_is_checked_and_derived_everywhere():
    w = Wider(**load_config('toy').to_dict())
    assert 'new_knob' in keys_affecting('encodings', w) and 'new_knob' not in keys_affecting('encodings')
    assert 'new_mode' in keys_free_of('training', Wider) and 'new_knob' not in keys_free_of('training', Wider)
    with pytest.raises(SettingError, match=r"setting new_knob = 9: must be in \[1, 8\]"): w.replace(new_knob=9)
    with pytest.raises(SettingError, match=r"setting new_mode = 'c': use one of \('a', 'b'\)"): w.replace(new_mode='c')
    assert w.replace(new_knob='3').new_knob == 3

def test_a_declaration_names_known_effects_and_a_real_interval():
    with pytest.raises(ValueError, match=r"\['encoding'\] are not effects"): setting(affects='training encoding')
    with pytest.raises(ValueError, match="write an interval"): setting(affects='', range='0 to 1')
    with pytest.raises(ValueError, match="effect 'speed' is not known"): keys_affecting('speed')
    assert set(EFFECTS) == {'training', 'encodings', 'index', 'eval_override'}
