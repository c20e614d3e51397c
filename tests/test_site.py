"""The course website (tools/build_site.py) built from a tiny synthetic executed course, then crawled in headless
Chromium (tools/site_check.py). Without chromium + chromedriver + selenium the browser tests skip, unless
GLSCL_REQUIRE_BROWSER=1 (CI), where they fail."""
import base64
import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
import build_site as bs  # noqa: E402  (tools/ on the path first)
import site_check as sc  # noqa: E402

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="60" height="30"><rect width="60" height="30" fill="teal"/></svg>'
WIDGET = 'application/vnd.jupyter.widget-view+json'


def _png() -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new('RGB', (40, 20), (200, 60, 30)).save(buf, 'PNG')
    return base64.b64encode(buf.getvalue()).decode()


def _widget(text):
    return new_output('display_data', data={WIDGET: {'model_id': 'abc', 'version_major': 2, 'version_minor': 0},
                                            'text/plain': text})


def _course(tmp: Path, broken: bool = False) -> tuple:
    "An executed course folder (two pages, no index) and an nbs folder (index.ipynb, images/); returns both."
    ex, nbs = tmp/'executed', tmp/'nbs'
    (nbs/'images').mkdir(parents=True)
    ex.mkdir()
    (nbs/'images'/'diagram.svg').write_text(SVG)
    first = new_notebook(
        cells=[
            new_code_cell('#| default_exp gim'),
            new_markdown_cell(
                '# First page\n\nPooling is `global_interaction`; scores go to `retrieval_metrics`.\n\n'
                '![diagram](images/diagram.svg)\n\n```python\nglobal_interaction(t, v)\n```\n\n'
                '[next: the second page](02_second.ipynb)'
            ),
            new_code_cell('#| export\ndef global_interaction(t, v): return t @ v.T'),
            new_markdown_cell(
                '## Scores of $t_a$\n\nText $a$ scores frame $i$ of video $b$ at temperature $\\tau$:\n\n'
                '$$s_{a,b,i} = t_a \\cdot f_{b,i}, \\qquad w_{a,b,i} = \\operatorname{softmax}_i\\!\\left('
                '\\frac{s_{a,b,i}}{\\tau}\\right).$$\n\nA GPU hour costs $5 (one dollar sign: not '
                'math).\n\nIn code: `label = "$x$"`.'
            ),
            new_code_cell(
                'label = "$x$ and $$y$$"',
                execution_count=2,
                outputs=[
                    new_output(
                        'display_data', data={'text/markdown': 'Measured: $\\alpha = 0.5$.', 'text/plain': '<Markdown>'}
                    ),
                    new_output('stream', name='stdout', text='cost: $3 $x$\n'),
                ],
            ),
            new_code_cell(
                'plot()',
                execution_count=3,
                outputs=[
                    new_output('stream', name='stdout', text='drawing\n'),
                    new_output('display_data', data={'image/png': _png(), 'text/plain': '<Figure>'}),
                    _widget('drawing toy videos:   0%|          | 0/12 [00:00<?, ?it/s]'),
                    _widget("VBox(children=(HBox(children=(Dropdown(description='video'),)),))"),
                ],
            ),
        ]
    )
    first.metadata['widgets'] = {'application/vnd.jupyter.widget-state+json': {'state': {'abc': {'x': 'y' * 5000}}}}
    second = new_notebook(cells=[
        new_code_cell('#| default_exp ranking'),
        new_markdown_cell('# Second page\n\n`retrieval_metrics` after `glscl.gim.global_interaction`; '
                          '[back](01_first.ipynb#First-page).'
                          + ('\n\n[gone](03_missing.ipynb) ![nope](images/nope.png)' if broken else '')),
        new_code_cell('#| export\ndef retrieval_metrics(sim): return {}'),
        new_code_cell('1 + 1', execution_count=1, outputs=[
            new_output('execute_result', data={'text/plain': '2'}, execution_count=1)]),
    ])
    index = new_notebook(cells=[new_markdown_cell('# Toy course\n\nStart with [the first page](01_first.ipynb).')])
    for name, nb in (('01_first', first), ('02_second', second)):
        nbformat.write(nb, ex/f'{name}.ipynb')
        nbformat.write(nb, nbs/f'{name}.ipynb')
    nbformat.write(index, nbs/'index.ipynb')
    return ex, nbs


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('site')
    ex, nbs = _course(tmp)
    pages = bs.build_site(ex, tmp/'site', nbs)
    return tmp/'site', pages


def test_pages_links_and_nav(site):
    out, pages = site
    assert [p.name for p in pages] == ['index.html', '01_first.html', '02_second.html']
    index, first, second = (p.read_text() for p in pages)
    assert 'Toy course' in index and 'href="01_first.html"' in index and 'href="02_second.html"' in index  # list
    assert 'href="02_second.html">next: the second page' in first and '.ipynb"' not in first + second + index
    assert 'href="01_first.html#First-page"' in second
    assert 'rel="prev"' in first and 'rel="next"' in first and 'href="index.html">index' in second
    assert (out/'images'/'diagram.svg').read_text() == SVG
    assert [p.name for p in (out/'01_first_files').iterdir()][0].endswith('.png')
    assert 'src="data:' not in first                                                     # images as files
    assert 'widget-state' not in first and 'yyyyy' not in first and '0/12' not in first  # widgets dropped
    assert bs.WIDGET_NOTE in first


def test_inline_code_links_to_defining_cell(site):
    out, pages = site
    index, first, second = (p.read_text() for p in pages)
    assert 'id="glscl.gim.global_interaction"' in first and 'id="glscl.ranking.retrieval_metrics"' in second
    assert '<a class="glscl-sym" href="#glscl.gim.global_interaction"><code>global_interaction</code></a>' in first
    assert ('<a class="glscl-sym" href="02_second.html#glscl.ranking.retrieval_metrics"><code>retrieval_metrics'
            in first)
    assert ('<a class="glscl-sym" href="01_first.html#glscl.gim.global_interaction"><code>glscl.gim.global_interaction'
            in second)
    assert first.count('class="glscl-sym"') == 2                  # not the name inside the code block


def test_math_served_from_the_site(site):
    "The pages load MathJax from the site's own copy; no page names a script or stylesheet on another host."
    out, pages = site
    assert (out/bs.MATHJAX_DIR/'MathJax.js').is_file() and (out/bs.MATHJAX_DIR/'fonts').is_dir()
    from bs4 import BeautifulSoup
    for page in pages:
        soup = BeautifulSoup(page.read_text(), 'html.parser')
        srcs = [t.get('src') or t.get('href') for t in soup.select('script[src], link[href], img[src]')]
        assert not [u for u in srcs if u.startswith(('http:', 'https:', '//'))], (page.name, srcs)
        assert not [t for t in soup.find_all('script') if 'import(' in t.text and 'http' in t.text], page.name
    first = pages[1].read_text()
    assert f'src="{bs.MATHJAX_SCRIPT}"' in first and 'cdnjs' not in first
    assert '$$s_{a,b,i} = t_a \\cdot f_{b,i}' in first       # the TeX stays for MathJax to typeset in the browser


def test_raw_math_is_tex_between_delimiters():
    "Display and inline math left as typed; dollars of prose (pandoc's rule) are not math."
    assert sc.raw_math('text $a$ with $t_a$ and $$x^2$$') == ['$a$', '$t_a$', '$$x^2$$']
    assert sc.raw_math(r'\[ \sum_i w_i \] and \(x\)') == [r'\[ \sum_i w_i \]', r'\(x\)']
    assert sc.raw_math(r'an \begin{align} block') == [r'\begin{align}']
    for prose in ('A GPU hour costs $5 and a day $100.', 'US$ 3 or $4', 'a $ b $ c', r'escaped \$x\$', '$x$5'):
        assert sc.raw_math(prose) == [], prose


def test_missing_or_empty_course_fails_loudly(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match='nowhere'): bs.build_site(tmp_path/'nowhere', tmp_path/'site')
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='empty.*no executed notebooks'):
        bs.build_site(tmp_path/'empty', tmp_path/'site')
    assert bs.main(['--executed', str(tmp_path/'empty'), '--out', str(tmp_path/'site')]) == 1
    assert 'no executed notebooks' in capsys.readouterr().err


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    ex, nbs = _course(tmp_path)
    (tmp_path/'mine').mkdir()
    (tmp_path/'mine'/'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError): bs.build_site(ex, tmp_path/'mine', nbs)
    assert (tmp_path/'mine'/'notes.txt').read_text() == 'keep me'
    bs.build_site(ex, tmp_path/'site', nbs)
    (tmp_path/'site'/'stale.html').write_text('old page')
    bs.build_site(ex, tmp_path/'site', nbs)                       # a rebuild clears its own site
    assert not (tmp_path/'site'/'stale.html').exists()


def test_repository_documents_become_pages(tmp_path):
    "A page's link to a document at the repository's top (`../RELEASED_RECIPE.md`) points to that document, rendered."
    ex, nbs = _course(tmp_path)
    nb = nbformat.read(ex/'02_second.ipynb', as_version=4)
    nb.cells.append(new_markdown_cell('The facts: [RELEASED_RECIPE.md](../RELEASED_RECIPE.md).'))
    nbformat.write(nb, ex/'02_second.ipynb')
    pages = bs.build_site(ex, tmp_path/'site', nbs)
    assert [p.name for p in pages] == ['index.html', '01_first.html', '02_second.html', 'RELEASED_RECIPE.html']
    second, doc = pages[2].read_text(), pages[3].read_text()
    assert 'href="RELEASED_RECIPE.html"' in second and '.md"' not in second
    assert 'The released GLSCL recipe' in doc and 'href="02a_annotations.html"' in doc and '.ipynb"' not in doc
    assert 'href="index.html"' in doc


@pytest.fixture(scope='module')
def browser():
    missing = []
    if importlib.util.find_spec('selenium') is None: missing.append('selenium (pip install selenium)')
    if sc.find_browser() is None: missing.append('chromium and chromedriver (bash tools/install_browser.sh)')
    if missing:
        why = 'headless site check needs ' + ' and '.join(missing)
        if os.environ.get('GLSCL_REQUIRE_BROWSER') == '1': pytest.fail(why + ' (GLSCL_REQUIRE_BROWSER=1)')
        pytest.skip(why)


def test_site_loads_in_headless_chromium(site, browser):
    r = sc.check_site(site[0])
    assert r['broken'] == []
    assert r['pages'] == 3 and r['images'] >= 2     # the png output and the svg from nbs/images
    assert r['links'] >= 5                          # pages, nav, anchors of the defining cells
    assert r['math'] == 7                           # heading, four inline, display, the markdown output; not code
    assert r['requests'] > 3                        # MathJax's scripts and fonts, all from the site


def test_headless_check_finds_untypeset_and_outside_math(tmp_path, browser):
    """Without the site's MathJax the TeX stays as typed; a script from a CDN is a request outside; hidden math has no
    size."""
    ex, nbs = _course(tmp_path)
    bs.build_site(ex, tmp_path/'site', nbs)
    shutil.rmtree(tmp_path/'site'/bs.MATHJAX_DIR)                      # as a CDN copy is, offline
    page = tmp_path/'site'/'02_second.html'
    page.write_text(page.read_text().replace('</head>', '<script src="https://cdn.example.org/x.js"></script>'
                                             '<style>.MathJax {display: none !important}</style></head>'))
    r = sc.check_site(tmp_path/'site', strict=False)
    raw = sorted(b['target'] for b in r['broken'] if b['kind'] == 'math' and b['page'] == '01_first.html')
    assert raw == sorted(
        [
            '$t_a$',
            '$a$',
            '$i$',
            '$b$',
            '$\\tau$',
            '$\\alpha = 0.5$',
            '$$s_{a,b,i} = t_a \\cdot f_{b,i}, '
            '\\qquad w_{a,b,i} = \\operatorname{softmax}_i\\!\\left(\\frac{s_{a,b,i}}{\\tau}\\right).$$'[:80],
        ]
    ), raw
    assert {b['target'] for b in r['broken'] if b['kind'] == 'request'} >= {
        'https://cdn.example.org/x.js', f'{bs.MATHJAX_DIR}/MathJax.js'}
    with pytest.raises(sc.SiteCheckError, match='TeX shown as typed'): sc.check_site(tmp_path/'site')
    bs.build_site(ex, tmp_path/'site', nbs)                            # typeset, but the formulas are hidden
    page.write_text(page.read_text().replace('</head>', '<style>.MathJax {display: none !important}</style></head>'))
    page = tmp_path/'site'/'01_first.html'
    page.write_text(page.read_text().replace('</head>', '<style>.MathJax {display: none !important}</style></head>'))
    r = sc.check_site(tmp_path/'site', strict=False)
    assert r['math'] == 7 and [b['detail'] for b in r['broken']] == ['formula has no size (0 x 0 px)'] * 7, r['broken']


def test_headless_check_finds_broken_links_and_images(tmp_path, browser):
    ex, nbs = _course(tmp_path, broken=True)
    bs.build_site(ex, tmp_path/'site', nbs)
    png = next((tmp_path/'site'/'01_first_files').iterdir())
    png.write_bytes(b'not a png')                                  # served, but does not decode
    r = sc.check_site(tmp_path/'site', strict=False)
    found = {(b['kind'], b['page'], b['target']) for b in r['broken']}
    assert found == {('link', '02_second.html', '03_missing.html'), ('image', '02_second.html', 'images/nope.png'),
                     ('image', '01_first.html', f'01_first_files/{png.name}')}, r['broken']
    shutil.rmtree(tmp_path/'site'/'images')
    with pytest.raises(sc.SiteCheckError, match='diagram.svg'): sc.check_site(tmp_path/'site')
