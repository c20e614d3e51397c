"""The house rule: modules import only downward. Every `glscl` module (top-level and lazy imports inside functions) may
import only modules of a lower layer, so that reading the package bottom-up never meets a name from above."""
import ast
from pathlib import Path
import pytest

# lowest first; modules in one tuple are peers and may not import each other
LAYERS = [('filesafety', 'settingsfiles'), ('config',), ('pixels',), ('video',), ('annotations',), ('data',),
          ('toyworld',), ('datasets', 'toylayouts'), ('framecache',), ('presetdata',), ('clip',), ('tinyclip',),
          ('gim', 'lim', 'losses', 'ranking'), ('heads',),
          ('metrics',), ('model',),
          # training, one concern a module
          ('optim', 'precision', 'distributed'), ('checkpoint',), ('evaluation', 'step'), ('train',),
          ('shortlist',), ('index',), ('efficiency', 'search', 'course'), ('cli',)]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
PKG = Path(__file__).resolve().parents[1]/'glscl'

def glscl_imports(path: Path) -> set:
    """The glscl modules that `path` imports anywhere in its code (`from glscl.x import`, `from .x import`, `import
    glscl.x`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: out |= {mod.split('.')[0]} if mod else {a.name for a in node.names}
            elif mod == 'glscl': out |= {a.name for a in node.names}
            elif mod.startswith('glscl.'): out.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('glscl.')}
            if any(a.name == 'glscl' for a in node.names): out.add('__init__')
    return out

def test_every_module_has_a_layer():
    mods = {p.stem for p in PKG.glob('*.py')} - {'__init__', '_modidx'}
    assert mods == set(RANK), f"add to LAYERS: {sorted(mods - set(RANK))}; remove: {sorted(set(RANK) - mods)}"

@pytest.mark.parametrize('mod', sorted(RANK))
def test_imports_only_downward(mod):
    up = sorted(m for m in glscl_imports(PKG/f'{mod}.py') if m != '__init__' and RANK.get(m, -1) >= RANK[mod])
    assert not up, (
        f"glscl.{mod} (layer {RANK[mod]}) imports {up}, which are not below it: {[(m, RANK.get(m)) for m in up]}")

def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    p = tmp_path/'m.py'
    p.write_text("from .gim import x\ndef f():\n    from glscl.train import y\n    import glscl.search\n")
    assert glscl_imports(p) == {'gim', 'train', 'search'}
