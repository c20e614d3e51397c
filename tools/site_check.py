#!/usr/bin/env python
"""Check a static site in headless Chromium: every page reachable from index.html loads and every image decodes.

    python tools/site_check.py runs/site

The site is served by a local `http.server` (a thread, free port); Chromium (Debian's `chromium` and
`chromium-driver`, see tools/install_browser.sh) is driven by selenium through `/usr/bin/chromedriver` and never
downloads a driver. Outside hosts do not resolve inside the browser, so the check also shows the site reads offline.
"""
from __future__ import annotations
import functools, os, shutil, sys, threading, urllib.error, urllib.request
from collections import deque
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

__all__ = ['find_browser', 'serve', 'check_site', 'SiteCheckError']

# gather links, ids, and the state of every image once they have all settled (loaded or failed)
PAGE_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))
  .then(() => done({
    title: document.title, text: (document.body ? document.body.innerText : '').trim().length,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
    images: imgs.map(i => ({src: i.getAttribute('src'), url: i.currentSrc || i.src, complete: i.complete,
                            width: i.naturalWidth}))}));
"""


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
    on its page. Returns {'site', 'pages', 'images', 'links', 'external_links', 'broken': [{kind, page, target, detail}]}
    (pages visited, images checked, distinct same-site link targets); with `strict`, raises SiteCheckError when
    anything is broken."""
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
    n_images, seen, queue = 0, {base + start}, deque([(base + start, '(start)')])
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
            httpd.status.pop(path, None)
            try:
                driver.get(url)
                info = driver.execute_async_script(PAGE_JS)
            except Exception as e:
                broken.append(dict(kind='page', page=source, target=rel(url), detail=f'did not load: {e}'.split('\n')[0]))
                continue
            code = httpd.status.get(path)
            if code != 200 or not info['text']:
                broken.append(dict(kind='link', page=source, target=rel(url),
                                   detail=f'HTTP {code}' if code != 200 else 'empty page'))
                continue
            page = rel(url)
            ids[url] = set(info['ids'])
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
            broken.append(dict(kind='anchor', page=page, target=f'{rel(target)}#{frag}', detail='no element with this id'))
    report = dict(site=str(site), pages=len(ids), images=n_images, links=len(targets), external_links=len(external),
                  broken=broken)
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
    print(f"{a.site}: {r['pages']} pages, {r['images']} images, {r['links']} links: all load")
    return 0


if __name__ == '__main__':
    sys.exit(main())
