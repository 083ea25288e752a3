"""``BUNDLE/wheels``: the sciqa wheel and the wheels of what the target lacks, via pip.

1. The sciqa wheel: ``pip wheel --no-deps`` of a copy of this checkout (no build
   isolation when setuptools is here, so it needs no network), or ``pack.sciqa_wheel``.
2. The roots: sciqa plus what ``sciqa infer`` needs at run time for these members
   (torch, transformers; gguf for GGUF members, peft for adapters...), with the version
   ranges of sciqa's own ``ml`` extra, and ``pack.requirements``.
3. pip resolves them for the target (``pip install --dry-run --report`` with
   ``--python-version``/``--platform``); the packages reachable from the roots without
   passing through an excluded one (``pack.exclude``: what the target already has) are
   downloaded with ``pip download --no-deps`` at the resolved versions. When every
   requirement is excluded, nothing is resolved and no index is asked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from infer.errors import InferError

SOURCE_ITEMS = ("pyproject.toml", "README.md", "sciqa", "data_gen", "retrieval", "train", "infer")


def canonical(name: str) -> str:
    """PEP 503 name: ``PyYAML`` -> ``pyyaml``, ``huggingface_hub`` -> ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def expand_platforms(platforms: list[str]) -> list[str]:
    """pip takes ``--platform`` tags literally; a glibc 2.35 machine also runs older
    manylinux wheels, so each ``manylinux_2_N_arch`` brings ``2_(N-1)`` ... ``2_17``.

    >>> expand_platforms(["manylinux_2_18_x86_64"])
    ['manylinux_2_18_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64']
    """
    out: list[str] = []
    for tag in platforms:
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if match and int(match[1]) >= 17:
            arch = match[2]
            out += [f"manylinux_2_{n}_{arch}" for n in range(int(match[1]), 16, -1)]
            out.append(f"manylinux2014_{arch}")
        else:
            out.append(tag)
    return list(dict.fromkeys(out))


def _pip(args: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
        )
    except OSError as exc:  # pragma: no cover - no Python to run
        raise InferError(f"cannot run pip for {what}: {exc}") from None


def build_sciqa_wheel(dest: Path, prebuilt: str | None) -> Path:
    """The sciqa wheel in ``dest``: ``prebuilt`` copied, or built from this checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    if prebuilt:
        wheel = Path(prebuilt).expanduser()
        if not (wheel.is_file() and wheel.name.startswith("sciqa-") and wheel.suffix == ".whl"):
            raise InferError(f"pack.sciqa_wheel = {prebuilt!r}: not a sciqa-*.whl file")
        return Path(shutil.copy2(wheel, dest / wheel.name))
    root = Path(__file__).resolve().parent.parent.parent  # infer/pack/wheels.py -> the checkout
    if not (root / "pyproject.toml").is_file():
        raise InferError(
            "sciqa is not installed from a source checkout, so pack cannot build its wheel; "
            "set pack.sciqa_wheel to a built sciqa-*.whl"
        )
    with tempfile.TemporaryDirectory(prefix="sciqa-wheel-") as tmp:
        # A clean copy: the build writes build/ and *.egg-info, which the checkout never gets.
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for item in SOURCE_ITEMS:
            path = root / item
            if path.is_dir():
                shutil.copytree(path, src / item, ignore=ignore)
            elif path.is_file():
                src.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / item)
        args = ["wheel", "--no-deps", "--no-index", "-w", str(Path(tmp) / "out"), str(src)]
        if _has_setuptools():
            args.insert(1, "--no-build-isolation")
        else:
            args.remove("--no-index")  # the isolated build fetches setuptools
        done = _pip(args, "the sciqa wheel")
        wheels = list((Path(tmp) / "out").glob("sciqa-*.whl"))
        if done.returncode != 0 or not wheels:
            raise InferError(f"building the sciqa wheel failed: {_pip_error(done)}")
        return Path(shutil.copy2(wheels[0], dest / wheels[0].name))


def _has_setuptools() -> bool:
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode("utf-8")


def wheel_requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` of a wheel that apply without extras."""
    reqs = re.findall(r"^Requires-Dist: (.+)$", _metadata(wheel), flags=re.MULTILINE)
    return [r.strip() for r in reqs if "extra ==" not in r and "extra==" not in r]


def check_requires_python(wheel: Path, python: str) -> None:
    """The wheel's ``Requires-Python`` admits the target's version (pip checks it only
    for what it resolves, and sciqa itself is resolved only when a dependency is)."""
    from packaging.specifiers import SpecifierSet

    found = re.search(r"^Requires-Python: (.+)$", _metadata(wheel), flags=re.MULTILINE)
    if found and f"{python}.0" not in SpecifierSet(found[1].strip()):
        raise InferError(
            f"pip cannot install sciqa on the target: it requires Python {found[1].strip()} "
            f"and --python (pack.python) is {python}"
        )


def infer_requirements(extras: set[str]) -> list[str]:
    """What ``sciqa infer`` imports beyond sciqa's core, ranged as in sciqa's ``ml`` extra.

    ``extras``: names needed for these members only (gguf, peft, accelerate, bitsandbytes).
    """
    import importlib.metadata

    wanted = ["torch", "transformers", *sorted(extras)]
    try:
        declared = importlib.metadata.requires("sciqa") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    ranges: dict[str, str] = {}
    for req in declared:
        spec = req.split(";")[0].strip()
        name = re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]
        ranges.setdefault(canonical(name), spec)
    return [ranges.get(canonical(n), n) for n in wanted]


def requirement_name(req: str) -> str:
    return canonical(re.split(r"[\s\[<>=!~;@(]", req.strip(), maxsplit=1)[0])


def _target_args(python: str, platforms: list[str]) -> list[str]:
    abi = "cp" + python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    args += ["--abi", abi]
    for tag in platforms:
        args += ["--platform", tag]
    return args


def resolve(roots: list[str], python: str, platforms: list[str], pip_args: list[str]) -> dict:
    """pip's installation report for ``roots`` on the target (nothing is installed)."""
    with tempfile.TemporaryDirectory(prefix="sciqa-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
        args += ["--target", str(Path(tmp) / "target"), *_target_args(python, platforms)]
        done = _pip([*args, *pip_args, *roots], "resolving")
        if done.returncode != 0 or not report.is_file():
            raise InferError(_unresolvable(done, python, platforms))
        return json.loads(report.read_text(encoding="utf-8"))


def needed(
    report: dict, roots: list[str], exclude: set[str], python: str, platforms: list[str]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Packages to bundle (name -> version) and the excluded ones they require
    (name -> the requirements that reached it), walking pip's resolution from ``roots``."""
    from packaging.requirements import Requirement

    installs = {canonical(i["metadata"]["name"]): i for i in report["install"]}
    env = dict(report.get("environment", {}))
    env.update(python_version=python, python_full_version=f"{python}.0")
    env.update(implementation_version=f"{python}.0", sys_platform="linux")
    if platforms:
        env["platform_machine"] = "aarch64" if platforms[0].endswith("aarch64") else "x86_64"
    # Extras asked of each package anywhere in the graph (markers like extra == "gui").
    extras: dict[str, set[str]] = {}
    for item in installs.values():
        for raw in item["metadata"].get("requires_dist") or []:
            req = Requirement(raw)
            extras.setdefault(canonical(req.name), set()).update(req.extras)
    for item in installs.values():
        extras.setdefault(canonical(item["metadata"]["name"]), set()).update(
            item.get("requested_extras") or []
        )
    keep: dict[str, str] = {}
    left_out: dict[str, list[str]] = {}
    stack = [requirement_name(r) if not r.endswith(".whl") else "sciqa" for r in roots]
    while stack:
        name = stack.pop()
        if name in keep or name not in installs:
            continue
        keep[name] = installs[name]["metadata"]["version"]
        for raw in installs[name]["metadata"].get("requires_dist") or []:
            req = Requirement(raw)
            applies = req.marker is None or any(
                req.marker.evaluate({**env, "extra": e}) for e in {"", *extras.get(name, ())}
            )
            dep = canonical(req.name)
            if not applies or dep not in installs:
                continue
            if dep in exclude:
                left_out.setdefault(dep, []).append(f"{req} ({name})")
            else:
                stack.append(dep)
    return keep, left_out


def download(
    pins: dict[str, str], dest: Path, python: str, platforms: list[str], pip_args: list[str]
) -> None:
    """``pip download --no-deps`` of exactly these versions into ``dest``."""
    if not pins:
        return
    reqs = [f"{name}=={version}" for name, version in sorted(pins.items())]
    args = ["download", "--no-deps", "--quiet", "-d", str(dest), *_target_args(python, platforms)]
    done = _pip([*args, *pip_args, *reqs], "downloading")
    if done.returncode != 0:
        raise InferError(_unresolvable(done, python, platforms))


def _pip_error(done: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or [f"pip exited {done.returncode}"])[-1]


def _unresolvable(done: subprocess.CompletedProcess, python: str, platforms: list[str]) -> str:
    """One line naming the package pip could not get for the target."""
    text = done.stderr + done.stdout
    package = None
    for pattern in (
        r"No matching distribution found for ([^\s;]+)",
        r"Package '([^']+)' requires a different Python",
        r"Cannot install ([^\s,=<>!~]+)",
        r"Could not find a version that satisfies the requirement ([^\s;]+)",
    ):
        match = re.search(pattern, text)
        if match:
            package = match[1]
            break
    where = f"Python {python} on {platforms[0] if platforms else 'this platform'}"
    what = f"{package} for {where}" if package else f"the wheels for {where}"
    return (
        f"pip cannot get {what}: {_pip_error(done)}; set --python/--platform "
        "(pack.python, pack.platforms) to the target's, or add it to pack.exclude if the "
        "target already has it"
    )


def bundle_wheels(dest: Path, cfg: Any, extras: set[str], log: Any = print) -> dict[str, Any]:
    """Fill ``dest`` with wheels; returns the manifest's ``wheels`` entry."""
    platforms = expand_platforms(cfg.platforms)
    exclude = {canonical(n) for n in cfg.exclude}
    sciqa_wheel = build_sciqa_wheel(dest, cfg.sciqa_wheel)
    check_requires_python(sciqa_wheel, cfg.python)
    wanted = [*infer_requirements(extras), *cfg.requirements]
    core = wheel_requirements(sciqa_wheel)
    left_out: dict[str, list[str]] = {}
    for req, by in [*((r, "sciqa") for r in core), *((r, "sciqa infer") for r in wanted)]:
        if requirement_name(req) in exclude:
            left_out.setdefault(requirement_name(req), []).append(f"{req} ({by})")
    install = [r for r in wanted if requirement_name(r) not in exclude]
    # sciqa's own dependencies are resolved only when the target may lack one of them.
    roots = [str(sciqa_wheel)] if any(requirement_name(r) not in exclude for r in core) else []
    roots += install
    keep: dict[str, str] = {}
    if roots:
        log(f"pack: resolving {len(roots)} requirement(s) for Python {cfg.python}")
        report = resolve(roots, cfg.python, platforms, cfg.pip_args)
        keep, reached = needed(report, roots, exclude, cfg.python, platforms)
        for name, reqs in reached.items():
            left_out.setdefault(name, []).extend(reqs)
        keep.pop("sciqa", None)
        log(f"pack: downloading {len(keep)} wheel(s)")
        download(keep, dest, cfg.python, platforms, cfg.pip_args)
    files = sorted(p.name for p in dest.glob("*.whl"))
    return {
        "python": cfg.python,
        "platforms": platforms,
        "sciqa_wheel": sciqa_wheel.name,
        "install": [f"sciqa=={_wheel_version(sciqa_wheel)}", *install],
        "bundled": {name: version for name, version in sorted(keep.items())},
        "files": files,
        "left_out": {name: sorted(set(reqs)) for name, reqs in sorted(left_out.items())},
        "exclude": sorted(exclude),
    }


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]
