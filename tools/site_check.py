#!/usr/bin/env python
"""Check a static site in headless Chromium: every page reachable from index.html loads, every image decodes, the
math is typeset, and nothing is fetched from outside the site.

    python tools/site_check.py runs/site

The site is served by a local `http.server` (a thread, free port); Chromium (Debian's `chromium` and
`chromium-driver`, see tools/install_browser.sh) is driven by selenium through `/usr/bin/chromedriver` and never
downloads a driver. Outside hosts do not resolve inside the browser, and every request a page makes (scripts, fonts,
styles, images, as the browser's resource timing lists them) must go to the local server and be answered 200, so a
passing check shows the site reads offline. Math: once MathJax has typeset a page, the visible text of its markdown
(code and pre left out) must hold no TeX left between math delimiters, and every typeset formula must have a size.
"""
from __future__ import annotations
import functools
import os
import re
import shutil
import sys
import threading
import urllib.error
import urllib.request
from collections import deque
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

__all__ = ['find_browser', 'serve', 'raw_math', 'check_site', 'SiteCheckError']

# formulas as typeset: MathJax 2 (HTML-CSS, SVG, CommonHTML), MathJax 3, KaTeX, or bare MathML not inside one of them
MATH_SEL = '.MathJax, .MathJax_SVG, .MathJax_CHTML, mjx-container, .katex'
# what hides math from the text check: code, typeset formulas, MathJax's own script/preview/assistive nodes
SKIP_SEL = ('pre, code, script, style, math, .MathJax_Preview, .MathJax_Display, .MJX_Assistive_MathML, '
            + MATH_SEL)

# once MathJax (when the page has it) has typeset the page and every image has settled (loaded or failed), gather
# links, ids, images, the markdown's visible text without code and math, the formulas' sizes, and every request made
PAGE_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
const typeset = new Promise(r => {
  if (window.MathJax && MathJax.Hub && MathJax.Hub.Register)
    MathJax.Hub.Register.StartupHook('End', () => r('mathjax2'));
  else if (window.MathJax && MathJax.startup && MathJax.startup.promise)
    MathJax.startup.promise.then(() => r('mathjax3'));
  else r(null);
});
const settled = imgs.map(i => i.complete ? null
  : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }));
Promise.all([typeset, ...settled]).then(([engine]) => setTimeout(() => {
  const md = Array.from(document.querySelectorAll('.jp-RenderedMarkdown, .jp-RenderedLatex')).map(el => {
    const c = el.cloneNode(true);
    c.querySelectorAll(arguments[0]).forEach(n => n.remove());
    return c.textContent;
  });
  const maths = Array.from(document.querySelectorAll(arguments[1])).concat(
    Array.from(document.querySelectorAll('math')).filter(m => !m.closest(arguments[1] + ', .MJX_Assistive_MathML')));
  done({
    title: document.title, text: (document.body ? document.body.innerText : '').trim().length, engine: engine,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
    images: imgs.map(i => ({src: i.getAttribute('src'), url: i.currentSrc || i.src, complete: i.complete,
                            width: i.naturalWidth})),
    markdown: md,
    math: maths.map(m => { const b = m.getBoundingClientRect();
                           return {width: b.width, height: b.height, text: (m.textContent || '').slice(0, 80),
                                   error: !!m.querySelector('.merror, .noError, [style*="color: red"]')}; }),
    requests: performance.getEntriesByType('resource').map(e => e.name),
    imports: Array.from(document.scripts).filter(s => !s.src && /import\\s*\\(\\s*["'`]https?:/.test(s.text)).length});
}, 0));
"""

# TeX left as typed in visible text. Display math ($$..$$, \[..\], \begin{env}) always counts; inline $..$ only as
# pandoc reads it (a non-space right after the opening $, a non-space before the closing one, no digit after it), so
# prose such as "costs $5 and $10" is not math; \(..\) likewise.
RAW_MATH_RE = re.compile(r'\$\$.+?\$\$|\\\[.+?\\\]|\\begin\{[a-zA-Z*]+\}|\\\(.+?\\\)'
                         r'|(?<![\\$])\$(?=[^\s$])[^$]*?[^\s\\$]\$(?!\d)|(?<![\\$])\$[^\s$\d]\$(?!\d)', re.S)


def raw_math(text: str) -> list:
    "The pieces of `text` that are TeX still between math delimiters (see RAW_MATH_RE)."
    return [m.group(0) for m in RAW_MATH_RE.finditer(text)]


class SiteCheckError(AssertionError):
    "The site has broken pages, links or images; `.report` is check_site's dict."
    def __init__(self, report: dict):
        self.report = report
        lines = [f"  {b['kind']}: {b['target']} (on {b['page']}): {b['detail']}" for b in report['broken'][:30]]
        more = len(report['broken']) - 30
        super().__init__(f"{len(report['broken'])} broken in {report['site']}:\n" + '\n'.join(lines)
                         + (f"\n  ... and {more} more" if more > 0 else ''))


def find_browser() -> tuple | None:
    """`(chromium binary, chromedriver)` when both are installed (override with GLSCL_CHROMIUM, GLSCL_CHROMEDRIVER),
    else None."""
    binary = os.environ.get('GLSCL_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    driver = os.environ.get('GLSCL_CHROMEDRIVER') or shutil.which('chromedriver') or '/usr/bin/chromedriver'
    ok = binary and driver and Path(binary).is_file() and Path(driver).is_file()
    return (binary, driver) if ok else None


class _Handler(SimpleHTTPRequestHandler):
    "Serves the site quietly and records the last status of every path."
    def log_request(self, code='-', size='-'):
        self.server.status[unquote(urlsplit(self.path).path)] = int(getattr(code, 'value', code))
    def log_message(self, *args): pass


def serve(site_dir):
    "Serve `site_dir` on 127.0.0.1 on a free port from a daemon thread; returns the server (`.shutdown()` it)."
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(site_dir)))
    httpd.status, httpd.daemon_threads = {}, True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _driver(binary: str, driver: str, timeout: float):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run',
                '--disable-extensions', '--disable-background-networking', '--window-size=1280,900',
                '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'):    # offline: no CDN
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.set_page_load_timeout(timeout)
    d.set_script_timeout(timeout)
    return d


def check_site(site_dir, start: str = 'index.html', strict: bool = True, timeout: float = 30) -> dict:
    """Crawl the site in `site_dir` from `start` in headless Chromium, following every same-site link.

    Each HTML page must answer 200 and have a non-empty body; every `<img>` must be `complete` with `naturalWidth > 0`;
    every same-site link must answer 200 (other files are fetched without the browser) and every `#anchor` must exist
    on its page. Offline: every request a page makes must go to the site and be answered 200 (kind 'request'), and no
    inline script may import from a URL. Math (kind 'math'): after typesetting, the markdown's visible text outside
    code holds no TeX between math delimiters (`raw_math`), and every formula has a non-zero size and no TeX error.
    Returns {'site', 'pages', 'images', 'links', 'external_links', 'math', 'requests', 'broken': [{kind, page, target,
    detail}]} (pages visited, images checked, distinct same-site link targets, formulas checked, requests made); with
    `strict`, raises SiteCheckError when anything is broken."""
    site = Path(site_dir)
    if not (site/start).is_file(): raise FileNotFoundError(f"no {start} in site folder {site}")
    found = find_browser()
    if found is None:
        raise RuntimeError("headless check needs Chromium and chromedriver: run tools/install_browser.sh "
                           "(apt-get install chromium chromium-driver)")
    httpd = serve(site)
    base = f'http://127.0.0.1:{httpd.server_address[1]}/'
    rel = lambda url: url[len(base):] or '/'
    broken, ids, refs, targets, external = [], {}, [], set(), set()
    n_images, n_math, n_requests, seen, queue = 0, 0, 0, {base + start}, deque([(base + start, '(start)')])
    driver = _driver(*found, timeout)
    try:
        while queue:
            url, source = queue.popleft()
            path = unquote(urlsplit(url).path)
            if not (path.endswith('.html') or path.endswith('/')):   # a file the site links to: fetch it plainly
                try: code = urllib.request.urlopen(url, timeout=timeout).status
                except urllib.error.HTTPError as e: code = e.code
                except OSError as e: code = str(e)
                if code != 200: broken.append(dict(kind='link', page=source, target=rel(url), detail=f'HTTP {code}'))
                continue
            httpd.status.clear()                    # from here on: what this page asks the server for
            try:
                driver.get(url)
                info = driver.execute_async_script(PAGE_JS, SKIP_SEL, MATH_SEL)
            except Exception as e:
                broken.append(dict(kind='page', page=source, target=rel(url),
                                   detail=f'did not load: {e}'.split('\n')[0]))
                continue
            code = httpd.status.get(path)
            if code != 200 or not info['text']:
                broken.append(dict(kind='link', page=source, target=rel(url),
                                   detail=f'HTTP {code}' if code != 200 else 'empty page'))
                continue
            page = rel(url)
            ids[url] = set(info['ids'])
            for req in info['requests']:
                n_requests += 1
                if not req.startswith(base):
                    broken.append(dict(kind='request', page=page, target=req, detail='fetched from outside the site'))
            shown = {unquote(urlsplit(img['url']).path) for img in info['images']}     # reported as images below
            for served, status in sorted(httpd.status.items()):
                if status not in (200, 304) and served != path and served not in shown:   # 304: cached copy is current
                    broken.append(dict(kind='request', page=page, target=served.lstrip('/'), detail=f'HTTP {status}'))
            if info['imports']:
                broken.append(dict(kind='request', page=page, target='<script>',
                                   detail=f"{info['imports']} inline script(s) import code from a URL"))
            for text in info['markdown']:
                for tex in raw_math(text):
                    broken.append(dict(kind='math', page=page, target=' '.join(tex.split())[:80],
                                       detail='TeX shown as typed, not typeset' + ('' if info['engine'] else
                                                                                    ' (no MathJax on the page)')))
            for m in info['math']:
                n_math += 1
                if not (m['width'] > 0 and m['height'] > 0) or m['error']:
                    broken.append(dict(kind='math', page=page, target=' '.join(m['text'].split())[:80],
                                       detail='TeX error' if m['error'] else
                                       f"formula has no size ({m['width']:.0f} x {m['height']:.0f} px)"))
            for img in info['images']:
                n_images += 1
                if not (img['complete'] and img['width'] > 0):
                    broken.append(dict(kind='image', page=page, target=img['src'],
                                       detail=f"does not decode ({img['url']})"))
            for link in info['links']:
                if not link.startswith(base):
                    if link.startswith(('http:', 'https:')): external.add(link)
                    continue
                target, frag = urldefrag(link)
                targets.add(link)
                if frag: refs.append((target, frag, page))
                if target not in seen:
                    seen.add(target)
                    queue.append((target, page))
    finally:
        driver.quit()
        httpd.shutdown()
        httpd.server_close()
    for target, frag, page in refs:
        if target in ids and frag not in ids[target] and unquote(frag) not in ids[target]:   # as browsers do
            broken.append(dict(kind='anchor', page=page, target=f'{rel(target)}#{frag}',
                               detail='no element with this id'))
    report = dict(site=str(site), pages=len(ids), images=n_images, links=len(targets), external_links=len(external),
                  math=n_math, requests=n_requests, broken=broken)
    if strict and broken: raise SiteCheckError(report)
    return report


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('site', nargs='?', default='runs/site', help='site folder (default runs/site)')
    a = ap.parse_args(argv)
    try: r = check_site(a.site)
    except SiteCheckError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{a.site}: {r['pages']} pages, {r['images']} images, {r['links']} links, {r['math']} formulas typeset, "
          f"{r['requests']} requests, none outside the site: all load")
    return 0


if __name__ == '__main__':
    sys.exit(main())
