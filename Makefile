# glscl: `make reproduce` runs the whole course on the toy preset; `make test` runs every check.
# Both create or refresh .venv first (pip, Python >= 3.10).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PRESET ?= toy
STAMP  := $(VENV)/.installed

.PHONY: venv reproduce test lab export clean-nbs bench platforms distclean docs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "glscl needs Python >= 3.10"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name glscl --display-name "Python 3 (glscl)" >/dev/null   # inside .venv: nothing outside the repository
	touch $(STAMP)

# Run every notebook in order with papermill on $(PRESET); executed notebooks and figures go to runs/.
reproduce: venv
	$(VENV)/bin/glscl course --preset $(PRESET) --out runs/course

test: venv
	bash tests/run_all.sh

lab: venv
	$(VENV)/bin/jupyter lab nbs

export: venv
	$(VENV)/bin/nbdev-export && $(VENV)/bin/nbdev-clean

bench: venv
	$(PY) benchmarks/bench_similarity.py
	$(PY) benchmarks/bench_video_backends.py

# every transitive dependency as wheels for macOS arm64 / Linux aarch64 / Linux x86_64 (network, about 1.5 min)
platforms: venv
	GLSCL_PLATFORM_CHECK=full $(PY) -m pytest -q -rs tests/test_platforms.py

distclean:
	rm -rf $(VENV) runs

# Static website of the executed course (runs the course first when runs/course has no executed notebooks). Math is
# typeset by the MathJax copied into the site from the dev extra jupyter-server-mathjax: the site reads offline.
docs: venv
	@ls runs/course/[0-9][0-9]_*.ipynb >/dev/null 2>&1 || $(MAKE) reproduce
	$(PY) tools/build_site.py --executed runs/course --out runs/site
	@echo "site: runs/site/index.html (check it in headless Chromium: $(PY) tools/site_check.py runs/site)"
