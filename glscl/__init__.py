"""GLSCL (global-local semantic consistent learning) for text-video retrieval, derived step by step in notebooks on open_clip

```python
import configparser, dataclasses, os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union, get_type_hints
```

```python
@dataclass(frozen=True)
class Config:
    "One run preset of `settings.ini`, typed. Paths are absolute (resolved against the file's folder)."
    name: str; description: str
    # data
    dataset: str; anno_dir: Path; video_dir: Path; train_split: str; test_split: str
    max_words: int; max_frames: int; fps: float; image_size: int
    # backbone and temporal transformer
    clip_model: str; clip_pretrained: Optional[str]; precision: str
    tt_layers: int; tt_init: str
    # GIM and LIM
    gim_temp: float
    n_queries: int; lim_layers: int; lim_heads: int; lim_ff_dim: int; lim_dropout: float
    share_queries: bool; share_decoder: bool
    # similarity and losses
    sim_lambda: float
    icl_beta: float; icl_target: float; icl_norm: str
    idl_alpha: float; idl_margin: float; idl_text: bool
    official_compat: bool
    # optimisation
    epochs: int; batch_size: int; lr: float; coef_lr: float; weight_decay: float
    adam_beta1: float; adam_beta2: float; adam_eps: float; warmup: float; grad_clip: float
    seed: int; num_workers: int; eval_batch_size: int; out_dir: Path
    # toy world only (0 when the preset reads real data)
    toy_videos: int = 0; toy_seed: int = 0

    def replace(self, **kw) -> "Config":
        "A copy with some fields changed (values are converted like the ini's strings)."
        return dataclasses.replace(self, **{k: _convert(self._types()[k], v, k, Path('.')) for k, v in kw.items()})

    @classmethod
    def _types(cls): return get_type_hints(cls)

    def to_dict(self) -> dict: return {f.name: getattr(self, f.name) for f in fields(self)}
```

```python
_TRUE, _FALSE = {'1', 'true', 'yes', 'on'}, {'0', 'false', 'no', 'off'}

def _convert(typ, value, key, root: Path):
    "Convert one ini value (or an already typed value) to `typ`."
    if typ == Optional[str]:
        if value is None or str(value).strip().lower() in ('', 'none'): return None
        return str(value)
    if typ is bool:
        if isinstance(value, bool): return value
        v = str(value).strip().lower()
        if v in _TRUE: return True
        if v in _FALSE: return False
        raise ValueError(f"setting {key!r}: {value!r} is not a boolean (use true or false)")
    if typ is Path:
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else (root/p).resolve()
    try: return typ(value)
    except (TypeError, ValueError): raise ValueError(f"setting {key!r}: {value!r} is not a valid {typ.__name__}") from None
```

```python
def settings_path(path=None) -> Path:
    "Find `settings.ini`: `path`, else $GLSCL_SETTINGS, else the current folder or a parent, else the repository of this package."
    if path is not None:
        p = Path(path)
        if not p.is_file(): raise FileNotFoundError(f"settings file {p} not found")
        return p
    if os.environ.get('GLSCL_SETTINGS'): return settings_path(os.environ['GLSCL_SETTINGS'])
    here = Path.cwd().resolve()
    for d in [here, *here.parents]:
        if (d/'settings.ini').is_file() and (d/'pyproject.toml').is_file(): return d/'settings.ini'
    p = Path(__file__).resolve().parents[1]/'settings.ini'
    if p.is_file(): return p
    raise FileNotFoundError("settings.ini not found: run from the glscl repository, or set GLSCL_SETTINGS=/path/to/settings.ini")

def _read_ini(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    cp.optionxform = str
    cp.read(path)
    return cp

def list_presets(path=None) -> list:
    "Names of the presets (sections) in `settings.ini`."
    return _read_ini(settings_path(path)).sections()
```

```python
def _section(cp, name, path, seen=()):
    "The keys of section `name`, following `base =` chains."
    if name not in cp: raise KeyError(f"preset {name!r} not in {path}; presets are: {', '.join(cp.sections())}")
    if name in seen: raise ValueError(f"{path}: presets {' -> '.join((*seen, name))} form a cycle of `base =`")
    own = dict(cp[name])
    base = own.pop('base', None)
    return {**(_section(cp, base, path, (*seen, name)) if base else {}), **own}

def load_config(name: str = 'toy', path=None, **overrides) -> Config:
    "Load preset `name` from `settings.ini` as a typed `Config`; `overrides` replace single keys."
    p = settings_path(path)
    raw = {**_section(_read_ini(p), name, p), **overrides}
    raw['name'] = name
    types = Config._types()
    unknown = set(raw) - set(types)
    if unknown: raise ValueError(f"{p} [{name}]: unknown setting(s) {sorted(unknown)}; known: {sorted(types)}")
    required = {f.name for f in fields(Config) if f.default is dataclasses.MISSING}
    missing = required - set(raw)
    if missing: raise ValueError(f"{p} [{name}]: missing setting(s) {sorted(missing)}; add them or a `base =` that has them")
    return Config(**{k: _convert(types[k], v, k, p.parent) for k, v in raw.items()})
```

```python
def course_notebooks(nbs_dir=None) -> list:
    "The course's notebooks in order (`NN_name.ipynb`)."
    nbs_dir = Path(nbs_dir) if nbs_dir else settings_path().parent/'nbs'
    return sorted(p for p in nbs_dir.glob('[0-9][0-9]_*.ipynb'))
```

```python
import json, time

def run_notebook(nb, out_dir, preset: str = 'toy', fig_dir=None, timeout: int = 1800, **params) -> dict:
    "Execute notebook `nb` with papermill on `preset`; the executed copy goes to `out_dir`, never back into nbs/."
    import papermill as pm
    nb, out_dir = Path(nb), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fig_dir is not None: Path(fig_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pm.execute_notebook(str(nb), str(out_dir/nb.name), cwd=str(nb.parent), kernel_name='python3',
                        parameters=dict(preset=preset, fig_dir=None if fig_dir is None else str(Path(fig_dir).resolve()), **params),
                        progress_bar=False, execution_timeout=timeout)
    return dict(notebook=nb.name, seconds=round(time.perf_counter() - t0, 1))

def run_course(preset: str = 'toy', out='runs/course', only=None) -> list:
    "Run every course notebook in order on `preset`; print and return a summary (notebook, seconds)."
    out = Path(out)
    rows = []
    for nb in course_notebooks():
        if only and not any(s in nb.name for s in only): continue
        print(f"running {nb.name} ...", flush=True)
        rows.append(run_notebook(nb, out, preset, fig_dir=out/'figures'))
        print(f"  done in {rows[-1]['seconds']} s", flush=True)
    figs = sorted(p.name for p in (out/'figures').glob('*.png')) if (out/'figures').exists() else []
    print(f"\n{len(rows)} notebooks on preset {preset!r} in {sum(r['seconds'] for r in rows):.0f} s; "
          f"executed notebooks in {out}/, {len(figs)} figures in {out}/figures/")
    for r in rows: print(f"  {r['notebook']:<32} {r['seconds']:>7.1f} s")
    (out/'summary.json').write_text(json.dumps(dict(preset=preset, notebooks=rows, figures=figs), indent=1))
    return rows

def main(argv=None):
    'Command line: `python -c "from glscl.config import main; main()" --preset toy --out runs/course [--only 00 01]`.'
    import argparse
    ap = argparse.ArgumentParser(description='Run the glscl course notebooks with papermill')
    ap.add_argument('--preset', default='toy'); ap.add_argument('--out', default='runs/course')
    ap.add_argument('--only', nargs='*', help='run only notebooks whose name contains one of these')
    a = ap.parse_args(argv)
    run_course(a.preset, a.out, a.only)
```

Modules:

- `glscl.clip`: open_clip as the backbone: every token of a caption and every sampled frame of a video as CLIP features, the temporal transformer that lets frames see each other, and the tiny CLIP that stands in for OpenAI's on a CPU.
- `glscl.config`: A course that derives GLSCL (Zhang et al., IEEE TIP 2025) step by step on top of open_clip, and the tested `glscl` library it exports.
- `glscl.toyworld`: Procedurally drawn videos with captions, written in MSR-VTT's exact file layout, so the whole method can be learned, run and tested on a laptop CPU with no download."""

__version__ = "0.0.1"
