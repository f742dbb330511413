"""Options for every recipe are plain dataclasses: defaults here, a YAML file on top, CLI flags on top of that.

`add_dataclass_args` turns a dataclass into argparse flags (`--lr 1e-4`, `--no-grad-checkpointing`), and
`build_config` merges defaults < YAML < flags given on the command line, so a saved YAML reproduces a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .errors import SpeechtuneError


def option(default, help_: str, **meta):
    """A dataclass field with the help text (and choices, or a "flag" name) its CLI flag is made from."""
    return dataclasses.field(default=default, metadata={"help": help_, **meta})


def _base_type(tp):
    # Optional[X] / X | None -> X; list[X] stays list.
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field. Defaults are left as None so we can tell which flags the user gave."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f"{help_} (default: {default})" if help_ else f"(default: {default})"
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp) or (str,)
            parser.add_argument(flag, dest=f.name, nargs="+", type=item, default=None, help=help_)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(flag, dest=f.name, type=tp if tp in (int, float) else str,
                                choices=choices, default=None, help=help_)


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpeechtuneError(f"config file not found: {p}", "pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SpeechtuneError(f"{p}: not valid YAML ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise SpeechtuneError(f"{p}: expected a mapping of option: value at the top level")
    return data


def build_config(cls, yaml_path: str | Path | None = None, args: argparse.Namespace | dict | None = None):
    """defaults < YAML < explicit CLI flags. Unknown YAML keys are an error naming the key."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        unknown = sorted(set(k.replace("-", "_") for k in data) - names)
        if unknown:
            raise SpeechtuneError(f"{yaml_path}: unknown option(s) {', '.join(unknown)}",
                                  f"valid options: {', '.join(sorted(names))}")
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    given = vars(args) if isinstance(args, argparse.Namespace) else (args or {})
    values.update({k: v for k, v in given.items() if k in names and v is not None})
    hints = _field_types(cls)
    for k, v in list(values.items()):
        tp = _base_type(hints[k])
        if tp in (int, float) and isinstance(v, (int, float, str)) and not isinstance(v, bool):
            try:
                values[k] = tp(v)
            except ValueError:
                raise SpeechtuneError(f"option {k}: expected a number, got {v!r}") from None
    return cls(**values)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True),
                          encoding="utf-8")
