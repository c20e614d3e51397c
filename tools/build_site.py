#!/usr/bin/env python
"""Render the executed course (papermill's copies of `nbs/NN_name.ipynb`) into a static website.

    python tools/build_site.py --executed runs/course --out runs/site [--nbs nbs]

Every page is plain HTML from nbconvert's `lab` template: the CSS is inlined and output images are separate files
(`NN_name_files/*.png`), so the site reads offline. Math is typeset in the browser by MathJax 2.7 copied into the
site (`mathjax/`, from the PyPI package `jupyter-server-mathjax`, the MathJax tree Jupyter itself serves): nbconvert's
CDN script is replaced by that local copy, so nothing is fetched from outside when a page is read. On each page,
relative `*.ipynb` links become `*.html`; inline code in markdown that names an exported symbol (`global_interaction`,
`glscl.gim.global_interaction`) links to the cell of the notebook that defines it; a nav bar gives previous / index /
next. `index.html` is the landing page (`index.ipynb`) plus the list of pages. Check the result in a real browser with
`tools/site_check.py`.
"""
from __future__ import annotations
import argparse
import ast
import copy
import html
import logging
import re
import shutil
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
MARKER = '.glscl-site'          # written into every site we build, so a rebuild may clear the folder
PAGE_RE = re.compile(r'^\d\d[a-z]?_.+\.ipynb$')                 # 13a_optimizer ...: the parts of a split notebook
WIDGET = 'application/vnd.jupyter.widget-view+json'
WIDGET_NOTE = '[interactive widget: open the notebook in Jupyter to use it]'
NAV_CSS = """<style type="text/css">
nav.glscl-nav {display: flex; gap: 1.5em; justify-content: space-between; max-width: 1100px; margin: 0.6em auto;
  padding: 0.5em 1em; font: 14px/1.4 system-ui, sans-serif; border: 1px solid #ddd; border-radius: 4px;
  background: #fafafa}
nav.glscl-nav a {text-decoration: none} nav.glscl-nav span.glscl-none {color: #aaa}
a.glscl-sym code {color: var(--jp-content-link-color, #1976d2)}
section.glscl-toc {padding: 0 1em 0 calc(var(--jp-cell-prompt-width, 64px) + 24px)}
ol.glscl-toc {font: 15px/1.7 system-ui, sans-serif}
</style>"""

MATHJAX_DIR = 'mathjax'        # the site's folder holding the local MathJax
# tex2jax's delimiters are the ones nbconvert's template gives MathJax (what mistune leaves as math); HTML-CSS output
# with the STIX-Web web fonts of the local tree (it ships no other fonts), never the reader's installed fonts or image
# fonts
MATHJAX_CONFIG = """MathJax.Hub.Config({
  tex2jax: {inlineMath: [['$','$'], ['\\\\(','\\\\)']], displayMath: [['$$','$$'], ['\\\\[','\\\\]']],
            processEscapes: true, processEnvironments: true},
  TeX: {equationNumbers: {autoNumber: 'AMS', useLabelIds: true}},
  'HTML-CSS': {availableFonts: [], preferredFont: null, webFont: 'STIX-Web', imageFont: null,
               linebreaks: {automatic: true}},
  displayAlign: 'center', messageStyle: 'none', showMathMenu: false, menuSettings: {zoom: 'None'}
});"""
MATHJAX_SCRIPT = f'{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'
# the hidden MathML copy of each formula (for screen readers) would ask for MathJax's TeX fonts, which the tree does not
# ship (404s); it is clipped to one pixel, so it keeps the page's font
MATHJAX_CSS = '.MJX_Assistive_MathML [mathvariant], .MJX_Assistive_MathML [class^="MJX-tex"] {font-family: inherit}'

__all__ = ['course_pages', 'exports_of', 'symbol_links', 'mathjax_source', 'build_site']


def mathjax_source() -> Path:
    """The folder of the MathJax 2.7 tree (`MathJax.js`, `jax/`, `fonts/`) that the PyPI package
    `jupyter-server-mathjax` ships. Raises when it is not installed."""
    import importlib.util
    spec = importlib.util.find_spec('jupyter_server_mathjax')
    src = Path(spec.origin).parent/'static' if spec and spec.origin else None
    if src is None or not (src/'MathJax.js').is_file():
        raise RuntimeError("the site's math needs MathJax from the PyPI package jupyter-server-mathjax: "
                           "pip install jupyter-server-mathjax (it is in glscl's dev extras: `make venv`)")
    return src


# ---------------------------------------------------------------- which notebooks, which symbols
def course_pages(executed_dir, nbs_dir='nbs') -> list:
    """`(stem, notebook path)` of every page in order: `index` first (from `executed_dir`, else the unexecuted one in
    `nbs_dir`, else None), then every `NN_*.ipynb` of `executed_dir` by name. Raises when there is none."""
    ex = Path(executed_dir)
    if not ex.is_dir():
        raise FileNotFoundError(f"executed course folder {ex} does not exist: run the course first (`make reproduce`)")
    pages = sorted(p for p in ex.iterdir() if PAGE_RE.match(p.name))
    if not pages:
        raise FileNotFoundError(f"executed course folder {ex} holds no executed notebooks (NN_name.ipynb): "
                                "run the course first (`make reproduce`)")
    index = next((p for p in (ex/'index.ipynb', Path(nbs_dir)/'index.ipynb') if p.is_file()), None)
    return [('index', index)] + [(p.stem, p) for p in pages]


def _directives(src: str) -> dict:
    "nbdev's `#| name args` lines of a cell source, as {name: args}."
    return {m.group(1): m.group(2).strip() for m in re.finditer(r'^#\s*\|\s*([\w-]+)[ \t]*(.*)$', src, re.M)}


def _defined_names(src: str) -> list:
    "Top-level names a code cell defines (`def`, `class`, assignments; `@patch def f(self: C)` gives `C.f`)."
    code = '\n'.join(ln for ln in src.splitlines() if not ln.lstrip().startswith(('%', '!')))
    try: tree = ast.parse(code)
    except SyntaxError:   # fall back to the obvious lines
        return re.findall(r'^(?:async\s+def|def|class)\s+(\w+)|^(\w+)\s*[:=]', code, re.M)
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            decos = [d.id if isinstance(d, ast.Name) else getattr(d, 'attr', '') for d in node.decorator_list]
            args = getattr(node, 'args', None)
            ann = args.args[0].annotation if args and args.args else None
            if 'patch' in decos and isinstance(ann, ast.Name): names.append(f'{ann.id}.{node.name}')
            else: names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return names


def exports_of(nb) -> tuple:
    """`(default_exp module, {(module, name): cell index})` of a notebook node: where each exported name is defined."""
    default, where = None, {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != 'code': continue
        d = _directives(cell.source)
        if 'default_exp' in d and default is None: default = d['default_exp'].split()[0]
        kind = next((k for k in ('export', 'exports', 'exporti') if k in d), None)
        if kind is None: continue
        mod = d[kind].split()[0] if d[kind] else default
        for name in _defined_names(cell.source): where.setdefault((mod, name), i)
    return default, where


def _read_modidx(path) -> dict:
    "nbdev's symbol index (`glscl/_modidx.py`) without importing the package: {'glscl.gim': {'glscl.gim.f': ...}}."
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'd' for t in node.targets):
            return ast.literal_eval(node.value)['syms']
    raise ValueError(f"{path}: no `d = {{...}}` symbol index")


def symbol_links(notebooks: dict, nbs_dir='nbs', modidx=None) -> tuple:
    """Link targets of the package's public exported symbols.

    `notebooks` is {page stem: notebook node} of the site. A symbol's module comes from nbdev's index (`modidx`,
    default `glscl/_modidx.py`); the module's page is the notebook whose `#| default_exp` names it (read from the site's
    notebooks, else from those in `nbs_dir` of the same name); the anchor is the cell that defines it.
    Returns `(links, anchors)`: links {code text: (stem, anchor or None)} for `glscl.mod.name`, `glscl.mod` and
    (when unambiguous) the bare `name`; anchors {stem: {cell index: [anchor ids]}}."""
    syms = _read_modidx(modidx or ROOT/'glscl'/'_modidx.py')
    mod_page, defined = {}, {}
    for stem, nb in notebooks.items():
        default, where = exports_of(nb)
        if default: mod_page.setdefault(default, stem)
        for key, i in where.items(): defined.setdefault(key, (stem, i))
    import nbformat
    for p in sorted(Path(nbs_dir).glob('*.ipynb')) if Path(nbs_dir).is_dir() else []:
        if p.stem not in notebooks: continue      # only pages that exist in the site
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            default, _ = exports_of(nbformat.read(p, as_version=4))
        if default: mod_page.setdefault(default, p.stem)
    links, anchors, short = {}, {}, {}
    for modname, entries in syms.items():
        mod = modname.split('.', 1)[1] if '.' in modname else modname
        for fq in entries:
            qual = fq[len(modname) + 1:]
            if any(part.startswith('_') for part in qual.split('.')): continue     # private names and dunders
            parts = qual.split('.')
            hit = next((defined[(mod, '.'.join(parts[:k]))] for k in range(len(parts), 0, -1)
                        if (mod, '.'.join(parts[:k])) in defined), None)
            if hit:
                stem, i = hit
                anchors.setdefault(stem, {}).setdefault(i, []).append(fq)
                target = (stem, fq)
            elif mod in mod_page: target = (mod_page[mod], None)
            else: continue
            links[fq] = target
            short.setdefault(qual, set()).add(target)
        if mod in mod_page: links.setdefault(modname, (mod_page[mod], None))
    for qual, targets in short.items():
        if len(targets) == 1 and qual not in links: links[qual] = next(iter(targets))
    return links, anchors


# ---------------------------------------------------------------- notebook -> html
def _title(nb, stem: str) -> str:
    "The first markdown heading of the notebook, else its file name."
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            m = re.search(r'^#{1,6}\s+(.+?)\s*#*\s*$', cell.source, re.M)
            if m: return re.sub(r'[`*]', '', m.group(1))
    return stem


def _clean_outputs(nb):
    """Drop what cannot live in a static page: widget state, tqdm progress widgets (their text is the 0% snapshot);
    other widgets become a one-line note. Papermill's injected parameters cell goes too (it holds the runner's paths;
    the notebook's own parameters cell, with the defaults, stays)."""
    nb.metadata.pop('widgets', None)
    nb.cells = [c for c in nb.cells if 'injected-parameters' not in c.get('metadata', {}).get('tags', [])]
    for cell in nb.cells:
        outs = []
        for out in cell.get('outputs', []):
            data = out.get('data', {})
            if WIDGET in data:
                text = data.get('text/plain', '')
                text = ''.join(text) if isinstance(text, list) else text
                if not re.match(r'^[A-Z]\w*\(', text): continue            # a progress bar, not a widget repr
                out = copy.deepcopy(out)
                out['data'] = {'text/plain': WIDGET_NOTE}
            outs.append(out)
        if 'outputs' in cell: cell.outputs = outs
    return nb


def _exporter():
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExtractOutputPreprocessor
    ex = HTMLExporter(template_name='lab')
    ex.log.setLevel(logging.ERROR)          # not one 'alternative text is missing' warning per page
    ex.register_preprocessor(ExtractOutputPreprocessor(enabled=True), enabled=True)
    return ex


def _nav(pages: list, k: int) -> str:
    "previous / index / next links for page `k` of `pages` [(stem, title)]."
    def link(j, rel, arrow):
        if not 0 <= j < len(pages): return f'<span class="glscl-none">{arrow}</span>'
        stem, title = pages[j]
        text = f'← {title}' if arrow == '←' else f'{title} →'
        return f'<a href="{stem}.html" rel="{rel}">{html.escape(text)}</a>'
    return (f'<nav class="glscl-nav">{link(k - 1, "prev", "←")}<a href="index.html">index</a>'
            f'{link(k + 1, "next", "→")}</nav>')


def _rewrite(soup, stem: str, links: dict, anchors: dict, docs: dict = None):
    """Post-process one page: `.ipynb` links, links to the repository's own markdown documents (`../NAME.md`: rendered
    into the site as NAME.html, collected in `docs`), anchors at defining cells, links on inline code of markdown
    cells."""
    for a in soup.find_all('a', href=True):
        u = urlsplit(a['href'])
        if u.scheme or u.netloc: continue
        if u.path.endswith('.ipynb'):
            a['href'] = urlunsplit(u._replace(path=u.path[:-len('.ipynb')] + '.html'))
        elif u.path.startswith('../') and u.path.endswith('.md') and docs is not None:
            doc = (ROOT/'nbs'/u.path).resolve()
            if doc.is_file() and doc.parent == ROOT:
                docs[doc.stem] = doc
                a['href'] = urlunsplit(u._replace(path=doc.stem + '.html'))
    cells = soup.select('main > div.jp-Cell')
    for i, ids in anchors.get(stem, {}).items():
        if i < len(cells):
            for fq in reversed(ids): cells[i].insert(0, soup.new_tag('a', id=fq))
    for md in soup.select('div.jp-MarkdownCell'):
        for code in md.find_all('code'):
            if code.find_parent(['pre', 'a']) or code.find(True): continue
            text = code.get_text().strip()
            target = links.get(text[:-2] if text.endswith('()') else text)
            if not target: continue
            page, anchor = target
            href = (f'{page}.html' if page != stem or not anchor else '') + (f'#{anchor}' if anchor else '')
            a = soup.new_tag('a', href=href, attrs={'class': 'glscl-sym'})
            code.wrap(a)
    for s in soup.find_all('script'):        # offline: no require.js (no widgets), no MathJax from a CDN or its config
        src, kind = s.get('src', ''), s.get('type', '')
        if 'require' in src or 'mathjax' in src.lower() or kind == 'text/x-mathjax-config' or 'init_mathjax' in s.text:
            s.decompose()
        elif src: s['defer'] = ''
        elif 'mermaid' in s.text and not soup.select('.jp-Mermaid'): s.decompose()  # its loader imports from a CDN
    if soup.head is not None:                   # the site's own MathJax (build_site copies it to MATHJAX_DIR)
        config = soup.new_tag('script', attrs={'type': 'text/x-mathjax-config'})
        config.string = MATHJAX_CONFIG
        soup.head.append(config)
        soup.head.append(soup.new_tag('script', attrs={'src': MATHJAX_SCRIPT}))
        style = soup.new_tag('style', attrs={'type': 'text/css'})
        style.string = MATHJAX_CSS
        soup.head.append(style)
        if not soup.head.find('link', rel='icon'):   # no icon: the browser would ask the server for /favicon.ico
            soup.head.append(soup.new_tag('link', attrs={'rel': 'icon', 'href': 'data:,'}))


def build_site(executed_dir, out_dir, nbs_dir='nbs', modidx=None) -> list:
    """Render the executed course in `executed_dir` into a static site in `out_dir` (cleared first when it is a site
    this function built). `nbs_dir` gives `images/` and, when `executed_dir` has none, `index.ipynb`. Returns the HTML
    pages written, `index.html` first."""
    import nbformat
    from bs4 import BeautifulSoup
    nbs_dir = Path(nbs_dir)
    if not nbs_dir.is_absolute() and not nbs_dir.exists(): nbs_dir = ROOT/nbs_dir     # called from another folder
    pages, out = course_pages(executed_dir, nbs_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out/MARKER).exists():
            raise FileExistsError(f"{out} exists and is not a site built by build_site: refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out/MARKER).write_text('built by tools/build_site.py; cleared on rebuild\n')
    nbs = {}
    for stem, path in pages:
        if path is None: nbs[stem] = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Course')])
        else:
            try:
                with warnings.catch_warnings():     # nbdev-cleaned notebooks may lack cell ids
                    warnings.simplefilter('ignore')
                    nbs[stem] = _clean_outputs(nbformat.read(path, as_version=4))
            except Exception as e: raise RuntimeError(f"cannot read notebook {path}: {e}") from e
    links, anchors = symbol_links(nbs, nbs_dir, modidx)
    titles = [(stem, _title(nb, stem)) for stem, nb in nbs.items()]
    shutil.copytree(mathjax_source(), out/MATHJAX_DIR)
    for src in (nbs_dir/'images', Path(executed_dir)/'images', Path(executed_dir)/'figures'):
        if src.is_dir(): shutil.copytree(src, out/src.name, dirs_exist_ok=True)
    ex, written, docs = _exporter(), [], {}
    for k, (stem, title) in enumerate(titles):
        nb = nbs[stem]
        nb.metadata['title'] = title
        try:
            body, res = ex.from_notebook_node(nb, resources={'output_files_dir': f'{stem}_files', 'unique_key': stem})
        except Exception as e: raise RuntimeError(f"nbconvert failed on {dict(pages)[stem]}: {e}") from e
        for name, data in res.get('outputs', {}).items():
            (out/name).parent.mkdir(parents=True, exist_ok=True)
            (out/name).write_bytes(data)
        soup = BeautifulSoup(body, 'html.parser')
        _rewrite(soup, stem, links, anchors, docs)
        nav = _nav(titles, k)
        soup.head.append(BeautifulSoup(NAV_CSS, 'html.parser'))
        soup.body.insert(0, BeautifulSoup(nav, 'html.parser'))
        if stem == 'index':
            toc = ''.join(f'<li><a href="{s}.html">{html.escape(t)}</a> <small>({s})</small></li>'
                          for s, t in titles[1:])
            (soup.main or soup.body).append(
                BeautifulSoup(
                    f'<section class="glscl-toc"><h2>Course pages</h2><ol class="glscl-toc">{toc}</ol></section>',
                    'html.parser',
                )
            )
        soup.body.append(BeautifulSoup(nav, 'html.parser'))
        (out/f'{stem}.html').write_text(str(soup), encoding='utf-8')
        written.append(out/f'{stem}.html')
    for name, doc in docs.items():   # the repository's documents the pages link to, as pages of the site
        from nbconvert.filters import markdown2html
        title, body = html.escape(name), markdown2html(doc.read_text(encoding="utf-8"))
        soup = BeautifulSoup(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><link rel="icon" '
                             f'href="data:,">{NAV_CSS}</head><body><main>{body}</main></body></html>', 'html.parser')
        for a in soup.find_all('a', href=True):   # links into the repository: notebooks become pages, other files text
            u = urlsplit(a['href'])
            if u.scheme or u.netloc or not u.path: continue
            if u.path.startswith('nbs/') and u.path.endswith('.ipynb') and (ROOT/u.path).is_file():
                a['href'] = urlunsplit(u._replace(path=Path(u.path).stem + '.html'))
            else: a.unwrap()
        soup.body.insert(0, BeautifulSoup('<nav class="glscl-nav"><a href="index.html">index</a></nav>', 'html.parser'))
        (out/f'{name}.html').write_text(str(soup), encoding='utf-8')
        written.append(out/f'{name}.html')
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--executed', default='runs/course', help='folder of executed notebooks (default runs/course)')
    ap.add_argument('--out', default='runs/site', help='site folder to write (default runs/site)')
    ap.add_argument('--nbs', default='nbs', help='source notebooks: images/ and the fallback index.ipynb (default nbs)')
    a = ap.parse_args(argv)
    try: pages = build_site(a.executed, a.out, a.nbs)
    except (FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"build_site: error: {e}", file=sys.stderr)
        return 1
    print(f"{len(pages)} pages written; open {Path(a.out)/'index.html'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
