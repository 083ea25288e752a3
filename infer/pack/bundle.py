"""``sciqa pack``: model dirs -> one folder to upload as a Kaggle dataset and run offline.

Example::

    sciqa pack runs/train "llm:default?normalise=chars" --out bundle -c configs/infer_kaggle.toml
    # on the target (no network):
    bash bundle/predict.sh test.csv /kaggle/working

BUNDLE holds ``models/`` (each member stripped to what infer loads), ``wheels/`` (sciqa
and what the target lacks), ``config.toml`` (the resolved ``infer`` and ``causal_lm``
sections, paths relative to the bundle), ``predict.sh`` and ``manifest.json`` (members,
weights, sha256 and size of every file, versions, what was left out). It is built in
``.OUT.partial/`` beside OUT and swapped in whole (:func:`sciqa.outdir.publish`), so OUT
is the previous bundle or the new one, never a mix; a killed pack leaves the partial
folder, which the next pack clears. One pack at a time writes OUT (``.OUT.lock``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infer.errors import InferError
from infer.models import ModelSpec, expand_model_dirs
from infer.pack.members import MODELS, Member, copy_member, plan_members
from infer.pack.script import PREDICT, render
from sciqa.config import CausalLMConfig, InferConfig, SciqaConfig, load_config
from sciqa.outdir import OutLock, fresh_partial, publish
from sciqa.runs import MANIFEST, OOF, file_digest, git_sha

BUNDLE_FORMAT = "sciqa-bundle/1"
CONFIG = "config.toml"
WHEELS = "wheels"


def is_bundle(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def _check_out(out: Path, overwrite: bool) -> None:
    """OUT may be new, an empty folder, or (with --overwrite) a bundle; nothing else."""
    if not out.exists():
        if not out.parent.is_dir():
            raise InferError(f"--out {out}: its folder {out.parent} does not exist")
        return
    if not out.is_dir():
        raise InferError(f"--out {out}: exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not is_bundle(out):
        raise InferError(
            f"--out {out}: exists and is not a sciqa bundle (no {MANIFEST} of format "
            f"{BUNDLE_FORMAT}); choose a new or empty folder, pack never deletes other files"
        )
    if not overwrite:
        raise InferError(f"--out {out}: already a bundle; pass --overwrite to replace it")


def _check_infer(infer: InferConfig) -> None:
    """What the target would refuse, refused here: a typo fails before anything is copied."""
    from infer.plan.budget import parse_duration

    if infer.time_budget:
        parse_duration(infer.time_budget)
    labels = infer.oof_labels
    if labels is not None and not Path(labels).expanduser().is_file():
        raise InferError(f"infer.oof_labels = {labels!r}: no such file")


def _weights(specs: list[ModelSpec], infer: InferConfig, seed: int) -> dict[str, Any]:
    """The weights infer will use, checked now: explicit ones parsed; ``auto``, ``stack``
    and ``select`` fitted on the runs' oof.parquet (the target refits them on the same
    files, to the same values)."""
    from infer.ensemble.combine import parse_weights

    text = infer.weights
    if text not in ("auto", "stack", "select"):
        values = parse_weights(text, len(specs), [s.name for s in specs])
        return {"setting": text, "values": values}
    from infer.ensemble.oof import fit_auto_weights
    from sciqa.io import read_table

    runs = [s.run_dir for s in specs if s.run_dir is not None]
    letters = next((s.letters for s in specs if s.letters), None)
    if runs and letters is None:
        columns = read_table(runs[0] / OOF).columns
        letters = [c for c in columns if len(c) == 1 and c.isupper()]
    values, report = fit_auto_weights(specs, letters or [], infer, seed)
    if infer.oof_labels is None and "answer" not in read_table(runs[0] / OOF).columns:
        raise InferError(
            f"--weights {text}: {runs[0] / OOF} has no 'answer' column, so its labels came "
            "from the run's training file, which the bundle does not hold; set "
            "infer.oof_labels to that file so pack bundles it"
        )
    return {"setting": text, "values": values, "fit": report}


def _extras(members: list[Member], causal: CausalLMConfig) -> set[str]:
    """Packages beyond torch + transformers that these members need on the target."""
    extras: set[str] = set()
    settings = [causal.model_dump(), *({**m.spec.overrides} for m in members)]
    if any(m.kind == "gguf" for m in members):
        extras.add("gguf")
    if any(m.base is not None for m in members):
        extras.add("peft")
    if any(s.get("device_map") or s.get("load_in", "none") != "none" for s in settings):
        extras.add("accelerate")
    if any(s.get("load_in", "none") != "none" for s in settings):
        extras.add("bitsandbytes")
    return extras


def _bundle_config(
    infer: InferConfig, causal: CausalLMConfig, members: list[Member], root: Path
) -> dict[str, dict]:
    """``infer`` and ``causal_lm`` with paths and member names as seen from the bundle."""
    sections = {
        "infer": infer.model_dump(mode="json"),
        "causal_lm": causal.model_dump(mode="json"),
    }
    settings = sections["infer"]
    renamed: list[str] = []
    for entry in settings["cascade_expensive"]:
        hits = [m.arg for m in members if entry in (m.spec.name, m.spec.arg)]
        renamed += hits or [entry]
    settings["cascade_expensive"] = list(dict.fromkeys(renamed))
    if settings["oof_labels"]:
        source = Path(settings["oof_labels"]).expanduser()
        target = f"{MODELS}/oof_labels{''.join(source.suffixes)}"
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / target)
        settings["oof_labels"] = target
    return sections


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    """TOML for flat config sections (None = key left out: its default is None)."""
    lines = ["# The resolved sciqa infer config of this bundle, written by `sciqa pack`."]
    for section, values in sections.items():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise InferError(f"config value {value!r} cannot be written as TOML")


def _write_config(sections: dict[str, dict], path: Path) -> None:
    path.write_text(toml_text(sections), encoding="utf-8")
    loaded = load_config(path)  # what the target will read: it must be what we meant
    for name, values in sections.items():
        if getattr(loaded, name).model_dump(mode="json") != values:
            raise InferError(f"{path}: [{name}] does not read back as written (a pack bug)")


def _describe_files(root: Path) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    total = sum(p.stat().st_size for p in files)
    described = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="pack: sha256", leave=False) as bar:
        for path in files:
            size = path.stat().st_size
            relative = path.relative_to(root).as_posix()
            described.append({"path": relative, "bytes": size, "sha256": file_digest(path)})
            bar.update(size)
    return described


def _member_rows(members: list[Member], weights: list[float], root: Path) -> list[dict]:
    rows = []
    for member, weight in zip(members, weights, strict=True):
        folder = root / member.dest
        files = [folder] if folder.is_file() else [p for p in folder.rglob("*") if p.is_file()]
        if member.base is not None:
            files += [p for p in (root / member.base.dest).rglob("*") if p.is_file()]
        rows.append(
            {
                "name": member.spec.name,
                "arg": member.spec.arg,
                "source": str(member.source),
                "family": member.spec.family,
                "kind": member.kind,
                "bundled": member.arg,
                "weight": weight,
                "bytes": sum(p.stat().st_size for p in files),
                "left_out": member.skipped,
                **({"base": member.base.dest} if member.base is not None else {}),
            }
        )
    return rows


def run_pack(
    model_args: list[str],
    out: Path,
    config: SciqaConfig,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the bundle OUT; returns its manifest."""
    out = Path(os.path.abspath(out))
    _check_out(out, overwrite)
    cfg = config
    _check_infer(cfg.infer)
    specs = expand_model_dirs(
        model_args, max_length=cfg.infer.max_length, use_context=cfg.infer.use_context
    )
    members = plan_members(specs)
    weight_info = _weights(specs, cfg.infer, cfg.seed)

    with OutLock(out):
        _check_out(out, overwrite)  # again: another pack may have written OUT meanwhile
        staging = fresh_partial(out)
        try:
            manifest = _build(staging, members, cfg, weight_info, log)
            publish(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return manifest


def _build(
    root: Path,
    members: list[Member],
    cfg: SciqaConfig,
    weight_info: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write the whole bundle into ``root``; returns its manifest."""
    from infer.pack.wheels import bundle_wheels

    # Wheels first: a target pip cannot serve fails before gigabytes are copied.
    wheels = bundle_wheels(root / WHEELS, cfg.pack, _extras(members, cfg.causal_lm), log)
    _copy_members(members, root)
    log(f"pack: {len(members)} member(s) copied")
    sections = _bundle_config(cfg.infer, cfg.causal_lm, members, root)
    _write_config(sections, root / CONFIG)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    _write_predict(root / PREDICT, wheels, members, created)
    manifest = _manifest(root, created, wheels, members, weight_info)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _copy_members(members: list[Member], root: Path) -> None:
    from tqdm.auto import tqdm

    total = sum(f.stat().st_size for m in members for f in m.files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="pack: models", leave=False) as bar:
        for member in members:
            copy_member(member, root)
            bar.update(sum(f.stat().st_size for f in member.files))


def _write_predict(
    script: Path, wheels: dict[str, Any], members: list[Member], created: str
) -> None:
    """``predict.sh``: installs what the target lacks, then runs ``sciqa infer``."""
    from infer.pack.wheels import requirement_name

    script.write_text(
        render(
            version=wheels["install"][0].split("==")[1],
            created=created,
            install=wheels["install"],
            needed=[requirement_name(r) for r in wheels["install"][1:]],
            members=[m.arg for m in members],
        ),
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _manifest(
    root: Path,
    created: str,
    wheels: dict[str, Any],
    members: list[Member],
    weight_info: dict[str, Any],
) -> dict[str, Any]:
    """The bundle's ``manifest.json``: members, weights, versions, every file's digest."""
    files = _describe_files(root)
    models_bytes = sum(f["bytes"] for f in files if f["path"].startswith(f"{MODELS}/"))
    wheels_bytes = sum(f["bytes"] for f in files if f["path"].startswith(f"{WHEELS}/"))
    return {
        "format": BUNDLE_FORMAT,
        "created": created,
        "sciqa": {"version": wheels["install"][0].split("==")[1], "git_sha": git_sha()},
        "host": {"platform": platform.platform(), "python": platform.python_version()},
        "members": _member_rows(members, weight_info["values"], root),
        "weights": weight_info,
        "config": CONFIG,
        "predict": f"bash {PREDICT} QUESTIONS OUT_DIR",
        "wheels": wheels,
        "bytes": {
            "models": models_bytes,
            "wheels": wheels_bytes,
            "total": sum(f["bytes"] for f in files),
        },
        "files": files,
    }
