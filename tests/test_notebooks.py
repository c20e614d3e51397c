"Every course notebook runs end to end with papermill on the toy preset (executed copies go to a temp folder)."
import pytest
from glscl.cli import course_notebooks, run_notebook

NBS = course_notebooks()
# The results table trains 5 variants x `seeds` runs; `make reproduce` runs it with 3 seeds, the tests with 1 to
# keep CI short (its lesson cells hold for any number of seeds).
PARAMS = {'14_toy_results.ipynb': dict(seeds=1)}

@pytest.mark.notebooks
@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb, tmp_path):
    res = run_notebook(nb, tmp_path/'out', preset='toy', fig_dir=tmp_path/'figs', **PARAMS.get(nb.name, {}))
    assert (tmp_path/'out'/nb.name).exists()
    print(f"{nb.name}: {res['seconds']} s")

def test_index_runs(tmp_path, root):
    run_notebook(root/'nbs'/'index.ipynb', tmp_path, preset='toy')
