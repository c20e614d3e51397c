"""The course as a reader meets it: one numbering with no gap or repeat, a recap and a link to the next notebook at the
end of each notebook, the landing page linking every notebook in order, no dead relative link in the notebooks'
prose or in README (images included), and no file or notebook named in the prose (notebooks' markdown, every .md of
the repository, settings.ini) that a clone of the repository does not hold."""
import json
import re
import subprocess
from pathlib import Path
import pytest
from glscl.cli import course_notebooks

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
COURSE = course_notebooks(NBS)                 # NN_name, and NNa_name for the parts of a split notebook (13a ... 13h)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')

def cells(nb: Path) -> list: return json.loads(nb.read_text())['cells']
def text(c) -> str: return ''.join(c['source'])
def relative_links(md: str) -> list:
    return [u for u in LINK.findall(md) if not re.match(r'[a-z]+:', u) and not u.startswith('#')]

def numbers(names: list) -> list:
    "Each notebook's number, NN or NNa: the parts of a split notebook share NN and run a, b, c, ... ."
    return [re.match(r'(\d\d)([a-z]?)_', n).groups() for n in names]

def test_numbering_has_no_gap_and_no_repeat():
    nums = numbers([p.name for p in COURSE])
    assert list(dict.fromkeys(int(n)
                              for n, _ in nums)) == list(range(len(set(n for n, _ in nums)))), [p.name for p in COURSE]
    for n in dict.fromkeys(n for n, _ in nums):
        parts = [s for m, s in nums if m == n]
        assert parts == [''] or parts == [chr(ord('a') + i) for i in range(len(parts))], (n, parts)

def test_the_numbering_check_sees_gaps_repeats_and_split_parts():
    assert numbers(['12_x.ipynb', '13a_y.ipynb', '13b_z.ipynb']) == [('12', ''), ('13', 'a'), ('13', 'b')]
    names = sorted(p.name for p in course_notebooks(NBS))
    assert [p.name for p in COURSE] == names and '13a_optimizer.ipynb' in names and '14_toy_results.ipynb' in names
    assert not any(n.startswith('13_') for n in names)             # the split notebook's parts replace it

@pytest.mark.parametrize('nb', COURSE, ids=[p.stem for p in COURSE])
def test_ends_with_a_recap_and_the_next_link(nb):
    last = [c for c in cells(nb) if c['cell_type'] == 'markdown'][-1]
    assert (cells(nb)[-1] is not None
            and text(last).startswith('## Recap')), f"{nb.name}: the last markdown cell is not a recap"
    i = COURSE.index(nb)
    want = COURSE[i + 1].name if i + 1 < len(COURSE) else 'index.ipynb'
    assert want in relative_links(text(last)), f"{nb.name}: the recap does not link to {want}"

def test_landing_page_links_every_notebook_in_order():
    md = '\n'.join(text(c) for c in cells(NBS/'index.ipynb') if c['cell_type'] == 'markdown')
    linked = [u for u in relative_links(md) if re.fullmatch(r'\d\d[a-z]?_\w+\.ipynb', u)]
    assert list(dict.fromkeys(linked)) == [p.name for p in COURSE]
    assert 'images/pipeline.svg' in relative_links(md)

@pytest.mark.parametrize('nb', [NBS/'index.ipynb'] + COURSE, ids=['index'] + [p.stem for p in COURSE])
def test_no_dead_relative_link(nb):
    dead = [u for c in cells(nb) if c['cell_type'] == 'markdown' for u in relative_links(text(c))
            if not (nb.parent/u.split('#')[0]).exists()]
    assert not dead, f"{nb.name} links to missing files: {dead}"

def test_readme_has_no_dead_relative_link():
    dead = [u for u in relative_links((ROOT/'README.md').read_text()) if not (ROOT/u.split('#')[0]).exists()]
    assert not dead, dead

@pytest.mark.parametrize('nb', COURSE, ids=[p.stem for p in COURSE])
def test_figures_carry_their_notebook_number(nb):
    names = re.findall(r"fig_dir\)\s*/\s*f?['\"]([^'\"]+\.png)", '\n'.join(text(c) for c in cells(nb)))
    assert all(n.startswith(nb.name[:3]) for n in names), (nb.name, names)

def test_the_checker_sees_dead_links(tmp_path):
    nb = tmp_path/'00_x.ipynb'
    nb.write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'source': ['see [a](01_missing.ipynb) and '
                                                                             '![b](images/no.png)']}]}))
    assert relative_links(text(cells(nb)[0])) == ['01_missing.ipynb', 'images/no.png']


# Files named in prose. A name is a path with a folder of the repository (`nbs/...`, `benchmarks/step_cost.py`), any
# path that climbs out (`../shared/...`: a clone holds nothing outside itself), a bare .md / .ipynb / .ini / .toml
# name, or a course notebook's stem (`15_train_msrvtt`). It must exist inside the repository, looked up from the
# file that names it, from the repository's root, or (notebooks) in nbs/.
TOP = ('nbs', 'glscl', 'tests', 'benchmarks', 'tools', 'data', 'docs', '.ci')
PATH = re.compile(
    r'(?<![\w./:-])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*|(?:[\w.-]+/)*[\w-]+\.(?:md|ipynb|ini|toml|py|sh|cfg|txt|svg|png))(?![\w/-])')
NOTEBOOK = re.compile(r'(?<![\w./-])(\d\d[a-z]?_[a-z][a-z0-9_]*)(\.ipynb)?(?![\w/-]|\.(?!ipynb)\w)')
NOT_OURS = {'glscl/settings.ini': "the copy of settings.ini that setup.py writes into a wheel or sdist",
            'my.ini': "README's example of a user's own presets file"}

def named_files(md: str) -> list:
    "Repository files that the prose `md` names (see above)."
    out = []
    for m in PATH.finditer(md):
        p = m.group(1)
        if (p.startswith('../') or ('/' in p and p.split('/')[0] in TOP)
            or ('/' not in p and p.endswith(('.md', '.ipynb', '.ini', '.toml')))):
            out.append(p)
    out += [m.group(1) + '.ipynb' for m in NOTEBOOK.finditer(md)]
    return [p for p in out if p not in NOT_OURS]

def in_repository(p: str, here: Path, root: Path = ROOT) -> bool:
    "Whether `p`, named in a file of folder `here`, is a file or folder of the repository at `root`."
    cands = [here/p, root/p] + ([root/'nbs'/p] if p.endswith('.ipynb') and '/' not in p else [])
    return any(c.resolve().is_relative_to(root.resolve()) and c.exists() for c in cands)

def prose_documents(root: Path = ROOT) -> list:
    "(where, folder, text) of every markdown cell of the notebooks, every tracked .md file, and settings.ini."
    docs = [(f"{nb.name} cell {i}", nb.parent, text(c)) for nb in sorted((root/'nbs').glob('*.ipynb'))
            for i, c in enumerate(cells(nb)) if c['cell_type'] == 'markdown']
    tracked = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '*.md'], cwd=root,
                             capture_output=True, text=True).stdout.split()
    mds = sorted(set(tracked) | {str(p.relative_to(root)) for p in root.glob('*.md')})
    return docs + [(f, (root/f).parent, (root/f).read_text()) for f in mds + ['settings.ini'] if (root/f).is_file()]

def test_prose_names_only_files_of_the_repository():
    dead = [f"{where}: {p}" for where, here, md in prose_documents() for p in named_files(md)
            if not in_repository(p, here)]
    assert not dead, "prose names files that a clone does not hold:\n" + '\n'.join(dead)

def test_the_name_checker_sees_missing_and_outside_files(tmp_path):
    (tmp_path/'nbs').mkdir(); (tmp_path/'nbs'/'01_here.ipynb').write_text('{}')
    (tmp_path.parent/'shared').mkdir(exist_ok=True); (tmp_path.parent/'shared'/'NOTES.md').write_text('x')
    md = ("see `../shared/NOTES.md`, [01](01_here.ipynb), notebook `02_gone`, `benchmarks/nothing.py`, `MISSING.md`, "
          "figure `13_toy_run.png`, `runs/toy/last.pt` and `MSRVTT_data.json`")
    names = named_files(md)
    assert names == ['../shared/NOTES.md', '01_here.ipynb', 'benchmarks/nothing.py', 'MISSING.md', '01_here.ipynb',
                     '02_gone.ipynb'], names
    assert [p for p in names if not in_repository(p, tmp_path/'nbs', tmp_path)] == [
        '../shared/NOTES.md', 'benchmarks/nothing.py', 'MISSING.md', '02_gone.ipynb']
