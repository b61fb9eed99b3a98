"""Building a `Config`: YAML loading, `a.b=value` overrides, type checks, then `validate.check`.

Every problem is reported at once (unknown keys with a did-you-mean, wrong types, out-of-range
values, cross-field rules, missing files) in one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from rodpo_dist.config.sections import Config
from rodpo_dist.config.validate import SourceProblem, check


class ConfigError(ValueError):
    """Raised with every problem found in a configuration, one per line."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SCALARS: dict[type, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against type `tp`; returns the (lightly converted) value or None on error."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{where}: {value!r} is not {_type_name(tp)}{hint}")
        return None
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return None
        return [_coerce(v, inner, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
            return None
        return {str(k): _coerce(v, typing.get_args(tp)[1], f"{where}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType) or tp not in _SCALARS:
        return value
    if _SCALARS[tp](value):
        return float(value) if tp is float else value
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 2e-5 as a string
        return float(value)
    problems.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return None


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            problems.append(f"{where}: unknown key{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a section (mapping), got {value!r}")
                continue
            kwargs[key] = _build(tp, value, f"{where}.", problems)
        else:
            coerced = _coerce(value, tp, where, problems)
            if coerced is not None:
                kwargs[key] = coerced
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected key.sub=value"], "command line")
    key, _, value = text.partition("=")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ConfigError names the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config file {p} does not exist"], str(p))
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"{p}: not valid YAML: {err}"], str(p)) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError([f"{p}: top level must be a mapping, got {type(loaded).__name__}"], str(p))
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults), apply `key.sub=value` overrides and validate it all."""
    raw = read_yaml(path) if path is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    return config_from_dict(raw, str(path) if path is not None else "defaults + overrides")


def config_from_dict(raw: dict[str, Any], source: str = "config", sources: bool = True) -> Config:
    """The validated config of `raw`; `sources=False` skips the checks of training inputs on disk."""
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)  # a field with a wrong type keeps its default here
    check(cfg, problems)
    if not sources:
        problems = [p for p in problems if not isinstance(p, SourceProblem)]
    if problems:
        raise ConfigError(problems, source)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


CONFIG_FILE = "config.yaml"
"""The resolved config a run writes into its folder and into each of its checkpoints."""


def saved_config_file(path: str | Path) -> Path | None:
    """The config a run saved with checkpoint `path` (in it, or in its run folder above it), if any."""
    return next((p / CONFIG_FILE for p in (Path(path), Path(path).parent) if (p / CONFIG_FILE).is_file()), None)


def saved_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The resolved config of the run that wrote `path` (a checkpoint or its run folder), overrides applied.

    For evaluating, serving or exporting the checkpoint from any folder: relative paths are read from
    the folder the run was launched in (found from `runtime.run_dir` above the checkpoint) where they
    exist there, and the training inputs (data files, the `init` checkpoint) need not exist any more.
    """
    saved = saved_config_file(path)
    if saved is None:
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} in it or in its parent (not a checkpoint or run folder "
                                f"of this trainer?); pass --config")
    raw = read_yaml(saved)
    launched = _launch_folder(saved.parent, str(raw.get("runtime", {}).get("run_dir", "")))
    if launched is not None:
        _rebase_paths(raw, launched)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return config_from_dict(raw, str(saved), sources=False)


_PATH_FIELDS = (("data", "path"), ("data", "prepared_dir"), ("data", "items", "path"), ("init",),
                ("runtime", "run_dir"), ("runtime", "deepspeed_config"))
_PATH_MAPS = (("data", "items", "vectors"), ("data", "feature_files"))


def _launch_folder(checkpoint: Path, run_dir: str) -> Path | None:
    """The folder a run was launched in: the ancestor of `checkpoint` below which `run_dir` (relative)
    leads to it; None for an absolute or upward `run_dir`, or a checkpoint moved out of it."""
    parts = Path(run_dir).parts
    if not parts or Path(run_dir).is_absolute() or ".." in parts:
        return None
    for folder in [checkpoint.resolve(), *checkpoint.resolve().parents]:
        if folder.parts[-len(parts):] == parts:
            return folder.parents[len(parts) - 1]
    return None


def _rebase_paths(raw: dict[str, Any], folder: Path) -> None:
    """Relative path fields of `raw` that exist under `folder` and not here, made absolute there."""
    def rebased(value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
            return value
        there = folder / value
        return str(there) if there.exists() else value

    def section(keys: tuple[str, ...]) -> dict[str, Any] | None:
        node: Any = raw
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else None

    for *parents, key in _PATH_FIELDS:
        if (node := section(tuple(parents))) is not None and key in node:
            node[key] = rebased(node[key])
    for keys in _PATH_MAPS:
        if (node := section(keys)) is not None:
            for name in node:
                node[name] = rebased(node[name])
