"benchmarks/step_cost.py, the source of the README's GPU estimates: its scaling from a micro batch holds."
import importlib.util
import pytest

@pytest.fixture(scope='module')
def sc(root):
    spec = importlib.util.spec_from_file_location('step_cost', root/'benchmarks'/'step_cost.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def test_step_cost_scales_from_the_micro_batch(sc):
    "FLOPs and saved activations measured at 2 and at 4 pairs, both scaled to 8, agree: the encoders dominate."
    a, b = sc.step_cost('toy', micro=2, batch=8, freeze_visual=False), sc.step_cost('toy', micro=4, batch=8,
                                                                                    freeze_visual=False)
    assert a['flops'] > 0 and a['activation_bytes'] > 0 and a['static_bytes'] > 0
    assert a['flops'] == pytest.approx(b['flops'], rel=0.05)
    # the B x B similarity terms are not linear in B; at the tiny CLIP's sizes they are ~10% of what is saved (at
    # ViT-B/32 and B = 128, [B, B, N] GIM tensors are megabytes against gigabytes of encoder activations)
    assert a['activation_bytes'] == pytest.approx(b['activation_bytes'], rel=0.2)
    # a frozen image tower trains fewer tensors: less gradient and optimizer memory
    assert sc.step_cost('toy', micro=2, batch=8)['static_bytes'] < a['static_bytes']
    text = sc.report(a)
    assert 'ESTIMATES' in text and 'min/epoch' in text

def test_grad_cache_costs(sc):
    """The chunk table: the towers' and the rest's saved bytes add up to the plain step's; caching lowers the estimated
    peak (more for smaller chunks, more again with checkpointing) and costs a second pass of the towers (counted
    FLOPs)."""
    c = sc.grad_cache_costs('toy', micro=2, chunks=(0, 4, 2), batch=8, freeze_visual=False)
    pp, fixed = c['per_pair'], c['fixed']
    for m in (2, 4):   # the split (towers, rest) and the fit (per pair + fixed) give back the plain step's saved bytes
        plain = sc.step_cost('toy', micro=m, batch=m, freeze_visual=False)
        assert sum(fixed[k] + m * pp[k]
                   for k in ('outside', 'blocks', 'rest')) == pytest.approx(plain['activation_bytes'], rel=1e-6)
    assert c['static_bytes'] == plain['static_bytes']
    rows = {(r['chunk'], r['checkpointing']): r for r in c['rows']}
    want = plain['static_bytes'] + sum(fixed[k] + 8 * pp[k] for k in ('outside', 'blocks', 'rest'))
    assert rows[0, False]['peak_bytes'] == pytest.approx(want, rel=1e-9)
    assert rows[0, False]['extra_flops'] == 0 and rows[0, False]['cpu_time_ratio'] == 1
    assert rows[2, False]['peak_bytes'] < rows[4, False]['peak_bytes'] < rows[0, False]['peak_bytes']
    for chunk in (0, 2, 4): assert rows[chunk, True]['peak_bytes'] < rows[chunk, False]['peak_bytes']
    # a second forward of the towers: between a fifth and a half more FLOPs (their forward is about a third of a step)
    assert 0.2 < rows[2, False]['extra_flops'] < 0.5 and rows[2, False]['extra_flops'] == rows[4, False]['extra_flops']
    assert rows[0, True]['extra_flops'] > 0.1                       # checkpointing recomputes the blocks' forward
    text = sc.grad_cache_report(c)
    assert 'ESTIMATED' in text and 'measured' in text and 'ONE GPU' in text
