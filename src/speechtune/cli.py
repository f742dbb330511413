"""`speechtune <command>`: one subcommand per recipe. Parses, calls the recipe, prints user errors as one line.

Each recipe module exposes `add_arguments(parser)` and `main(args) -> int`; its docstring's first line is
the command's help. Modules keep heavy imports (torch, transformers) inside functions so `--help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import SpeechtuneError

COMMANDS = {
    "transcribe": "speechtune.transcribe",
    "synth": "speechtune.synth",
    "speak": "speechtune.tts.speak",
    "prepare": "speechtune.data.prepare",
    "train": "speechtune.train.recipe",
    "evaluate": "speechtune.evaluate",
    "compare": "speechtune.compare",
    "export": "speechtune.export.recipe",
    "serve": "speechtune.serve.recipe",
    "estimate": "speechtune.plan.recipe",
    "demo": "speechtune.demo",
}


def _load(modname: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        # A command not built in this version is skipped; any other missing import is a real bug.
        if e.name and modname.startswith(e.name):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechtune", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"speechtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = _load(modname)
        if mod is None or not hasattr(mod, "add_arguments"):
            continue
        doc = (mod.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description="\n".join(doc) or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import transformers
        transformers.logging.set_verbosity_error()
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(args._main(args) or 0)
    except SpeechtuneError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
