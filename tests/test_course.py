"""The course as a reader meets it: one numbering with no gap or repeat, a recap and a link to the next notebook at the
end of each notebook, the landing page linking every notebook in order, and no dead relative link in the notebooks'
prose or in README (images included)."""
import json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
COURSE = sorted(NBS.glob('[0-9][0-9]_*.ipynb'))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')

def cells(nb: Path) -> list: return json.loads(nb.read_text())['cells']
def text(c) -> str: return ''.join(c['source'])
def relative_links(md: str) -> list:
    return [u for u in LINK.findall(md) if not re.match(r'[a-z]+:', u) and not u.startswith('#')]

def test_numbering_has_no_gap_and_no_repeat():
    assert [int(p.name[:2]) for p in COURSE] == list(range(len(COURSE))), [p.name for p in COURSE]

@pytest.mark.parametrize('nb', COURSE, ids=[p.stem for p in COURSE])
def test_ends_with_a_recap_and_the_next_link(nb):
    last = [c for c in cells(nb) if c['cell_type'] == 'markdown'][-1]
    assert cells(nb)[-1] is not None and text(last).startswith('## Recap'), f"{nb.name}: the last markdown cell is not a recap"
    i = COURSE.index(nb)
    want = COURSE[i + 1].name if i + 1 < len(COURSE) else 'index.ipynb'
    assert want in relative_links(text(last)), f"{nb.name}: the recap does not link to {want}"

def test_landing_page_links_every_notebook_in_order():
    md = '\n'.join(text(c) for c in cells(NBS/'index.ipynb') if c['cell_type'] == 'markdown')
    linked = [u for u in relative_links(md) if re.fullmatch(r'\d\d_\w+\.ipynb', u)]
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
    nb.write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'source': ['see [a](01_missing.ipynb) and ![b](images/no.png)']}]}))
    assert relative_links(text(cells(nb)[0])) == ['01_missing.ipynb', 'images/no.png']
