"""Every course notebook runs end to end with papermill on the toy preset; then the executed course is rendered into
the static site (`make docs`' tools/build_site.py) and crawled in headless Chromium (tools/site_check.py): every link
from the index and every figure must load."""
import os
import shutil
import sys
import pytest
from glscl.cli import course_notebooks, run_notebook

NBS = course_notebooks()
# The study trains 8 configurations x `seeds` runs on 2,500 toy videos; `make reproduce` runs it as designed, the
# tests on the small `toy-study-ci` world with a few steps and 2 seeds (enough to combine seeds; numbers meaningless).
PARAMS = {'14_toy_results.ipynb': dict(study='toy-study-ci', seeds=2, n_boot=200)}

@pytest.fixture(scope='session')
def executed(tmp_path_factory):
    "One folder for the whole session's executed notebooks (and figures/), which the site test renders."
    return tmp_path_factory.mktemp('course')

def run(nb, out):
    return run_notebook(nb, out, preset='toy', fig_dir=out/'figures', **PARAMS.get(nb.name, {}))

@pytest.mark.notebooks
@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb, executed):
    res = run(nb, executed)
    assert (executed/nb.name).exists()
    print(f"{nb.name}: {res['seconds']} s")

def test_index_runs(executed, root):
    run_notebook(root/'nbs'/'index.ipynb', executed, preset='toy')
    assert (executed/'index.ipynb').exists()

def _browser_ready() -> bool:
    try: import selenium  # noqa: F401
    except ImportError: return False
    return bool(shutil.which('chromium') or shutil.which('chromium-browser')) and bool(shutil.which('chromedriver'))

@pytest.mark.notebooks
def test_course_site(executed, root, tmp_path):
    "The site of the executed course: built from the notebooks run above (any not run yet in this session runs now)."
    if not _browser_ready():
        if os.environ.get('GLSCL_REQUIRE_BROWSER') == '1':
            pytest.fail("no headless Chromium: run tools/install_browser.sh")
        pytest.skip("no chromium/chromedriver/selenium here (tools/install_browser.sh installs them)")
    for nb in NBS:
        if not (executed/nb.name).exists(): run(nb, executed)
    if not (executed/'index.ipynb').exists(): run_notebook(root/'nbs'/'index.ipynb', executed, preset='toy')
    sys.path.insert(0, str(root/'tools'))
    import build_site
    import site_check
    pages = build_site.build_site(executed, tmp_path/'site', nbs_dir=root/'nbs')
    course = {nb.stem for nb in NBS} | {'index'}
    assert sorted(p.stem for p in pages if p.stem in course) == sorted(course)        # every notebook and the index
    assert {p.name for p in pages if p.stem not in course} == {'RELEASED_RECIPE.html'}  # the document 15 links to
    r = site_check.check_site(tmp_path/'site')                 # raises, listing each broken link or image, if any
    import nbformat
    shown = sum(1 for f in executed.glob('*.ipynb') for c in nbformat.read(f, 4).cells for o in c.get('outputs', [])
                if any(k.startswith('image/') for k in o.get('data', {})))
    assert shown > 10 and r['pages'] >= len(NBS) + 1 and r['images'] >= shown      # every figure of the course, loaded
    print(f"site: {r['pages']} pages, {r['images']} images, {r['links']} links, all load")
