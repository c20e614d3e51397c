"""The course notebooks' section headings: numbered `##` sections go 1, 2, 3, ... in order, and a notebook has at most
one recap. (Sections get renumbered by hand when a notebook is split or merged; stale numbers read as missing parts.)"""
import re
from pathlib import Path
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT/'nbs').glob('*.ipynb'))
NUMBERED = re.compile(r'^##\s+(\d+)[.)]?\s')


def headings(nb, level: int = 2) -> list:
    "The `#`*level headings of a notebook's markdown cells in order, fenced code blocks left out."
    out = []
    for cell in nb.cells:
        if cell.cell_type != 'markdown': continue
        fenced = False
        for line in cell.source.splitlines():
            if re.match(r'^\s*(```|~~~)', line): fenced = not fenced
            elif not fenced and re.match(r'^#{%d}\s' % level, line): out.append(line.strip())
    return out


def section_problems(nb) -> list:
    "What is wrong with a notebook's `##` sections: numbers not 1..n in order, more than one recap."
    found = [int(m.group(1)) for h in headings(nb) if (m := NUMBERED.match(h))]
    problems = []
    if found != list(range(1, len(found) + 1)):
        problems.append(f'numbered sections go {found}, not {list(range(1, len(found) + 1))}')
    recaps = [h for h in headings(nb) if re.match(r'^##\s+recap\b', h, re.I)]
    if len(recaps) > 1: problems.append(f'{len(recaps)} recaps: {recaps}')
    return problems


def _nb(*markdown):
    return new_notebook(cells=[new_markdown_cell(m) for m in markdown] + [new_code_cell('## 9. a comment in code')])


def test_section_problems_are_found():
    "The rule itself: a notebook that starts at 2, one that skips, one with two recaps; fenced code does not count."
    assert section_problems(_nb('# T', '## 2. Which frames?\n\ntext', '## 3. CLIP pixels')) == [
        'numbered sections go [2, 3], not [1, 2]']
    assert section_problems(_nb('## 1. Files', '## 4. Datasets', '## 5. Bad input', '## Recap')) == [
        'numbered sections go [1, 4, 5], not [1, 2, 3]']
    assert section_problems(_nb('## Recap', '## Setup', '## Recap\n\nagain')) == ["2 recaps: ['## Recap', '## Recap']"]
    assert section_problems(_nb('## 1. One\n\n```\n## 7. inside a fence\n```', '## 2. Two', '### 5. a subsection',
                                '## Recap')) == []


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_course_sections_are_numbered_in_order(path):
    assert section_problems(nbformat.read(path, as_version=4)) == [], path.name


def test_the_notebooks_are_there():
    assert len(NOTEBOOKS) >= 20 and any(p.name == '15_train_msrvtt.ipynb' for p in NOTEBOOKS)
