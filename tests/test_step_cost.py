"benchmarks/step_cost.py, the source of the README's GPU estimates: its scaling from a micro batch holds."
import importlib.util, sys
from pathlib import Path
import pytest

@pytest.fixture(scope='module')
def sc(root):
    spec = importlib.util.spec_from_file_location('step_cost', root/'benchmarks'/'step_cost.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def test_step_cost_scales_from_the_micro_batch(sc):
    "FLOPs and saved activations measured at 2 and at 4 pairs, both scaled to 8, agree: the encoders dominate."
    a, b = sc.step_cost('toy', micro=2, batch=8, freeze_visual=False), sc.step_cost('toy', micro=4, batch=8, freeze_visual=False)
    assert a['flops'] > 0 and a['activation_bytes'] > 0 and a['static_bytes'] > 0
    assert a['flops'] == pytest.approx(b['flops'], rel=0.05)
    # the B x B similarity terms are not linear in B; at the tiny CLIP's sizes they are ~10% of what is saved (at ViT-B/32
    # and B = 128, [B, B, N] GIM tensors are megabytes against gigabytes of encoder activations)
    assert a['activation_bytes'] == pytest.approx(b['activation_bytes'], rel=0.2)
    # a frozen image tower trains fewer tensors: less gradient and optimizer memory
    assert sc.step_cost('toy', micro=2, batch=8)['static_bytes'] < a['static_bytes']
    text = sc.report(a)
    assert 'ESTIMATES' in text and 'min/epoch' in text
