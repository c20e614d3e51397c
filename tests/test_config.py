"Run presets: settings.ini -> typed Config, base chains, overrides and errors."
import pathlib, pytest
from glscl.config import load_config, list_presets, Config
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
    assert (c.gim_temp, c.n_queries, c.lim_layers, c.lim_ff_dim, c.lim_heads, c.lim_dropout) == (3.0, 8, 3, 2048, 8, 0.1)
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
    assert (fix['precision'], fix['optimizer'], fix['official_compat'], fix['ddp_gather']) == ('amp-bf16', 'adamw', False, 'exact')

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
    assert names == sorted(names) and names[0].startswith('00_')
