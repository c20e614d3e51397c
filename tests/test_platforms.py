"""Install anywhere: every requirement of pyproject.toml (with the dev extra) has a wheel on the package registry for
macOS arm64, Linux aarch64 and Linux x86_64; and the device choice (glscl.train.pick_device) on each.

The registry check reads the registry's JSON index pages (PEP 691) and matches wheel tags with `packaging`:
nothing is downloaded or installed, one page per requirement, in parallel (a few seconds). When the registry cannot
be reached, the check is skipped and says so. GLSCL_PLATFORM_CHECK=full also resolves every transitive dependency
for each platform with pip (`install --dry-run --report --only-binary=:all: --platform ...`, environment markers
evaluated for the target platform, wheel metadata read by HTTP range requests): about 1-1.5 minutes here.
`python tests/test_platforms.py [full]` prints the table."""
import concurrent.futures as cf
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
PY = sys.version_info[:2]   # the Python to check for: this one (override: GLSCL_PLATFORM_PYTHON=3.12)
if os.environ.get("GLSCL_PLATFORM_PYTHON"):
    PY = tuple(int(x) for x in os.environ["GLSCL_PLATFORM_PYTHON"].split(".")[:2])
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _manylinux(arch):
    """manylinux tags for glibc 2.35 (Ubuntu 22.04) down to the oldest, with their legacy aliases (manylinux2014 = 2_17,
    ...)."""
    legacy = ["manylinux2014", "manylinux2010", "manylinux1"] if arch == "x86_64" else ["manylinux2014"]
    return [f"manylinux_2_{v}_{arch}" for v in range(35, 4, -1)] + [f"{t}_{arch}" for t in legacy]


PLATFORMS = {  # name: (wheel platform tags, most preferred first; environment-marker values)
    "macos-arm64": (list(mac_platforms((14, 0), "arm64")),
                    dict(sys_platform="darwin", platform_system="Darwin", platform_machine="arm64")),
    "linux-aarch64": (_manylinux("aarch64"),
                      dict(sys_platform="linux", platform_system="Linux", platform_machine="aarch64")),
    "linux-x86_64": (_manylinux("x86_64"),
                     dict(sys_platform="linux", platform_system="Linux", platform_machine="x86_64")),
}


def marker_env(platform: str, py=PY) -> dict:
    v = f"{py[0]}.{py[1]}"
    return dict(os_name="posix", python_version=v, python_full_version=f"{v}.0", implementation_name="cpython",
                platform_python_implementation="CPython", platform_release="", platform_version="", extra="",
                **PLATFORMS[platform][1])


def wheel_tags(platform: str, py=PY) -> set:
    plats = PLATFORMS[platform][0]
    return set(cpython_tags(py, [f"cp{py[0]}{py[1]}", "abi3", "none"], plats)) | set(
        compatible_tags(py, f"cp{py[0]}{py[1]}", plats))


def project_requirements() -> list:
    "The requirements `make` installs: [project] dependencies and the dev extra."
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in proj["dependencies"] + proj.get("optional-dependencies", {}).get("dev", [])]


def requirements_for(platform: str, reqs=None, py=PY) -> list:
    "The requirements whose environment markers hold on `platform`."
    env = marker_env(platform, py)
    return [r for r in (reqs if reqs is not None else project_requirements()) if r.marker is None
            or r.marker.evaluate(env)]


def best_wheel(req: Requirement, files: list, tags: set, py=PY):
    """(version, filename) of the newest non-yanked, final-release wheel in the index `files` that satisfies `req`,
    supports Python `py` and carries one of `tags`; None when there is none."""
    best, full = None, f"{py[0]}.{py[1]}.0"
    for f in files:
        fn = f["filename"]
        if not fn.endswith(".whl") or f.get("yanked"): continue
        try: name, version, _, ftags = parse_wheel_filename(fn)
        except Exception: continue
        if canonicalize_name(name) != canonicalize_name(req.name) or version.is_prerelease: continue
        if not req.specifier.contains(version, prereleases=False): continue
        rp = f.get("requires-python")
        try:
            if rp and not SpecifierSet(rp).contains(full, prereleases=True): continue
        except Exception: pass
        if ftags & tags and (best is None or version > best[0]): best = (version, fn)
    return best


def _ssl():
    cafile = os.environ.get("PIP_CERT")
    return ssl.create_default_context(cafile=cafile if cafile and os.path.isfile(cafile) else None)


def index_files(name: str, timeout: float = 60) -> list:
    "The files of project `name` on the registry's simple index (PEP 691 JSON)."
    req = urllib.request.Request(f"{INDEX}/{canonicalize_name(name)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=timeout, context=_ssl()) as r: return json.loads(r.read())["files"]


def fetch_index(names) -> dict:
    "{name: files} for every project in `names`, fetched in parallel; a network error propagates (URLError, OSError)."
    with cf.ThreadPoolExecutor(8) as ex: return dict(zip(names, ex.map(index_files, names), strict=True))


def check_platform(platform: str, files_by_name: dict, reqs=None, py=PY) -> tuple:
    "({requirement: (version, wheel)} for `platform`, [requirements with no wheel there])."
    tags, found, missing = wheel_tags(platform, py), {}, []
    for r in requirements_for(platform, reqs, py):
        w = best_wheel(r, files_by_name[r.name], tags, py)
        if w is None: missing.append(str(r))
        else: found[str(r)] = (str(w[0]), w[1])
    return found, missing


# ---------------------------------------------------------------- the checker itself, offline
DECORD_FILES = [{"filename": f"decord-0.6.0-py3-none-{p}.whl"} for p in ("manylinux2010_x86_64", "win_amd64")] + \
               [{"filename": "decord-0.5.2-py3-none-manylinux2010_x86_64.whl"}, {"filename": "decord-0.6.0.tar.gz"}]
AV_FILES = [
    {"filename": f"av-18.1.0-cp311-cp311-{p}.whl"}
    for p in ("macosx_11_0_arm64", "manylinux_2_28_aarch64", "manylinux_2_28_x86_64")
] + [
    {"filename": "av-19.0.0-cp311-cp311-macosx_11_0_arm64.whl", "yanked": True},
    {"filename": "av-20.0.0rc1-cp311-cp311-macosx_11_0_arm64.whl"},
    {"filename": "av-18.2.0-cp311-cp311-macosx_11_0_arm64.whl", "requires-python": ">=3.12"},
]


def test_checker_finds_missing_wheels_offline():
    "The unconditional decord requirement fails on macOS and ARM Linux; the one with markers passes everywhere."
    files, py = {"decord": DECORD_FILES, "av": AV_FILES}, (3, 11)
    old = [Requirement("decord>=0.6"), Requirement("av>=11")]
    for plat, miss in [("macos-arm64", ["decord>=0.6"]), ("linux-aarch64", ["decord>=0.6"]), ("linux-x86_64", [])]:
        assert check_platform(plat, files, old, py)[1] == miss, plat
    new = [r for r in project_requirements() if r.name in ("decord", "av")]
    assert len(new) == 2 and str(new[0].marker or new[1].marker)
    for plat in PLATFORMS:
        found, missing = check_platform(plat, files, new, py)
        assert missing == [] and ("decord" in " ".join(found)) == (plat == "linux-x86_64"), (plat, found)
        assert [v for k, (v, _) in found.items() if k.startswith("av")] == ["18.1.0"]   # not yanked, pre or 3.12-only
    assert check_platform("linux-x86_64", files, [Requirement("decord>=0.7")], py)[1] == ["decord>=0.7"]


def test_marker_env_and_tags():
    assert Tag("cp311", "cp311", "macosx_11_0_arm64") in wheel_tags("macos-arm64", (3, 11))
    assert Tag("py3", "none", "any") in wheel_tags("linux-aarch64", (3, 11))
    assert Tag("py3", "none", "manylinux2010_x86_64") in wheel_tags("linux-x86_64", (3, 11))
    assert not wheel_tags("linux-aarch64", (3, 11)) & {Tag("py3", "none", "manylinux2010_x86_64"),
                                                       Tag("cp311", "cp311", "macosx_11_0_arm64")}
    assert [r.name for r in requirements_for("linux-x86_64") if r.marker] == ["decord"]
    assert ("decord" not in [r.name for r in requirements_for("macos-arm64")]
            + [r.name for r in requirements_for("linux-aarch64")])


# ---------------------------------------------------------------- the registry
@pytest.fixture(scope="module")
def registry():
    names = sorted({r.name for r in project_requirements()})
    t = time.perf_counter()
    try: files = fetch_index(names)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        pytest.skip(f"the package registry {INDEX} cannot be reached ({e}); platform check skipped, not failed")
    print(f"\nindex pages of {len(names)} projects from {INDEX} in {time.perf_counter() - t:.1f} s")
    return files


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_every_requirement_has_a_wheel(registry, platform):
    found, missing = check_platform(platform, registry)
    print(f"{platform} (Python {PY[0]}.{PY[1]}): " + ", ".join(f"{Requirement(k).name} {v}"
                                                               for k, (v, _) in found.items()))
    assert not missing, f"no wheel on {INDEX} for {platform}, Python {PY[0]}.{PY[1]}: {missing}"
    assert any(k.startswith("av") for k in found) and any(k.startswith("torch>") for k in found)


# ---------------------------------------------------------------- full resolution with pip (opt-in)
PIP_AS = r'''
import json, sys
import pip._vendor.packaging.markers as markers
env, default = json.loads(sys.argv[1]), markers.default_environment
markers.default_environment = lambda: {**default(), **env}      # pip evaluates markers for the target, not this machine
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
'''
NETWORK_ERRORS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                  "Connection refused", "Network is unreachable", "Could not fetch URL", "ProxyError", "ConnectTimeout")


def pip_resolve(platform: str, py=PY, timeout: int = 600) -> tuple:
    "(returncode, {name: version} or None, stderr tail, seconds): pip's resolution for `platform`, nothing installed."
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "pip_as.py").write_text(PIP_AS)
        cmd = [sys.executable, f"{d}/pip_as.py", json.dumps(marker_env(platform, py)), "install",
               "--dry-run", "--quiet", "--report", f"{d}/report.json", "--ignore-installed", "--target", f"{d}/target",
               "--only-binary=:all:", "--python-version", f"{py[0]}.{py[1]}", "--implementation", "cp",
               # no pip cache in the home folder
               "--use-feature=fast-deps", "--progress-bar", "off", "--no-cache-dir", "--index-url", INDEX]
        cmd += ([a for p in PLATFORMS[platform][0] for a in ("--platform", p)]
                + [str(r) for r in requirements_for(platform, py=py)])
        # the registry only
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        err = "\n".join(ln for ln in p.stderr.splitlines() if "fast-deps" not in ln)[-2000:]
        got = None
        if p.returncode == 0:
            got = {i["metadata"]["name"]: i["metadata"]["version"]
                   for i in json.loads((Path(d) / "report.json").read_text())["install"]}
        return p.returncode, got, err, time.perf_counter() - t


@pytest.fixture(scope="module")
def resolutions():
    if os.environ.get("GLSCL_PLATFORM_CHECK", "").lower() != "full":
        pytest.skip("transitive resolution with pip runs with GLSCL_PLATFORM_CHECK=full (about 1-1.5 min)")
    with cf.ThreadPoolExecutor(len(PLATFORMS)) as ex:
        return dict(zip(PLATFORMS, ex.map(pip_resolve, PLATFORMS), strict=True))


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_full_resolution_with_pip(resolutions, platform):
    rc, got, err, secs = resolutions[platform]
    if rc and any(s in err for s in NETWORK_ERRORS): pytest.skip(f"the registry cannot be reached: {err[-300:]}")
    assert rc == 0, f"pip cannot resolve the dependencies as wheels for {platform}:\n{err}"
    print(f"{platform}: {len(got)} packages in {secs:.0f} s; torch {got.get('torch')}, av {got.get('av')}, decord "
          f"{got.get('decord')}")
    assert ("decord" in got) == (platform == "linux-x86_64") and "av" in got


# ---------------------------------------------------------------- the device choice on each platform
import torch                                                       # noqa: E402
import glscl.step as C                                             # noqa: E402  (pick_device and its probe)
from glscl.train import pick_device, probe_device  # noqa: E402


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    C._mps_verdict.cache_clear()
    yield
    C._mps_verdict.cache_clear()


def test_probe_runs_every_op_of_a_toy_training_step():
    """probe_device('cpu') passes, leaves the caller's random stream alone, and runs every aten op that a real toy
    train_step (a loader-sized batch, the toy preset) runs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from glscl.model import GLSCL
    from glscl.train import make_optimizer, make_scheduler, train_step
    def aten_ops(fn):
        ops = set()
        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.add(func.overloadpacket.__name__); return func(*args, **(kwargs or {}))
        with Record(): out = fn()
        return ops, out
    cfg = C.load_config("toy", clip_pretrained="none")
    B, N, L, S = 4, cfg.max_frames, cfg.max_words, cfg.image_size
    ids, mask = torch.randint(1, 49000, (B, L)), torch.arange(L)[None] < torch.tensor([[10], [6], [3], [L]])
    ids[:, 0], ids[torch.arange(B), mask.sum(1) - 1] = 49406, 49407
    fm = torch.arange(N)[None] < torch.tensor([[N], [2], [4], [3]])
    batch = dict(ids=ids * mask, mask=mask, frame_mask=fm, index=torch.arange(B),
                 video_index=torch.arange(B), n_skipped=0,
                 frames=torch.randint(0, 256, (B, N, 3, S, S), dtype=torch.uint8) * fm[..., None, None, None])
    model = GLSCL(cfg).train()
    opt = make_optimizer(model, cfg)
    real, _ = aten_ops(lambda: train_step(model, batch, opt, make_scheduler(opt, cfg, 10), cfg, 0))
    torch.manual_seed(7); before = torch.rand(3)
    torch.manual_seed(7)
    probe, verdict = aten_ops(lambda: probe_device("cpu"))
    assert verdict is None and torch.equal(torch.rand(3), before)
    assert len(real) > 50 and real <= probe, sorted(real - probe)


def test_probe_refuses_broken_or_wrong_devices(monkeypatch):
    "A device that computes nothing ('meta') is refused; so is one that computes wrong numbers (simulated)."
    assert "Error" in probe_device("meta")
    fixed = [torch.arange(6.).view(2, 3), torch.ones(4)]
    monkeypatch.setattr(C, "_probe_step", lambda device, seed=0: [t + (0.01 if device == "mps" else 0) for t in fixed])
    assert "differ" in probe_device("mps")
    assert probe_device("mps", atol=0.1) is None
    monkeypatch.setattr(C, "_probe_step", lambda device, seed=0: [t[:1] if device == "mps" else t for t in fixed])
    assert "differ" in probe_device("mps", atol=1.0)                      # a wrong shape


@pytest.mark.parametrize("cuda,mps,verdict,want", [
    (True, True, None, "cuda"),                      # Linux/Windows with a GPU
    (False, True, None, "mps"),                      # a Mac whose MPS runs every op
    (False, True, "NotImplementedError: aten::x", "cpu"),   # a Mac whose MPS misses one: the CPU, with a warning
    (False, False, None, "cpu"),                     # any CPU-only machine
])
def test_auto_device(monkeypatch, caplog, cuda, mps, verdict, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(C, "_mps_available", lambda: mps)
    calls = []
    monkeypatch.setattr(C, "probe_device", lambda d, atol=1e-3: calls.append(d) or verdict)
    C._mps_verdict.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="glscl.config"):
            assert pick_device("auto").type == want == pick_device(None).type == pick_device().type
        assert calls == (["mps"] if mps and not cuda else [])          # probed once, cached
        assert ("cannot run" in caplog.text) == (want == "cpu" and mps)
    finally: C._mps_verdict.cache_clear()


def test_explicit_devices(monkeypatch, no_cuda):
    assert pick_device("cpu") == torch.device("cpu") == pick_device(torch.device("cpu")) == pick_device(" CPU ")
    with pytest.raises(ValueError, match="CUDA is not available"): pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"): pick_device("tpu")
    with pytest.raises(ValueError, match="unknown device"): pick_device("cpu:0")
    monkeypatch.setattr(C, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match="Apple silicon"): pick_device("mps")
    monkeypatch.setattr(C, "_mps_available", lambda: True)
    monkeypatch.setattr(C, "probe_device", lambda d, atol=1e-3: "NotImplementedError: aten::_upsample_bicubic2d_aa")
    with pytest.raises(ValueError, match="PYTORCH_ENABLE_MPS_FALLBACK.*|_upsample_bicubic2d_aa"): pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 1 CUDA"): pick_device("cuda:1")


def test_training_uses_pick_device(monkeypatch, no_cuda):
    "The course's training loop (train -> init_distributed) and `glscl eval` choose through pick_device."
    import glscl.cli
    import glscl.train
    seen = []
    monkeypatch.setattr(glscl.train, "pick_device", lambda name=None: seen.append(name) or torch.device("cpu"))
    assert glscl.train.init_distributed("auto") == torch.device("cpu") and seen == ["auto"]
    assert glscl.cli.parser().parse_args(["train"]).device == "auto"


if __name__ == "__main__":
    files = fetch_index(sorted({r.name for r in project_requirements()}))
    for plat in PLATFORMS:
        found, missing = check_platform(plat, files)
        print(f"{plat}: missing {missing or 'nothing'}\n  " + "\n  ".join(f"{k:<60} {v:<12} {w}"
                                                                          for k, (v, w) in found.items()))
    if sys.argv[1:] == ["full"]:
        with cf.ThreadPoolExecutor(len(PLATFORMS)) as ex:
            for plat, (rc, got, err, secs) in zip(PLATFORMS, ex.map(pip_resolve, PLATFORMS), strict=True):
                print(f"{plat}: pip rc {rc}, {len(got or {})} packages, {secs:.0f} s" + (f"\n{err}" if rc else ""))
