"""The ``lbcnn`` command: a thin shell over the Python API.

Every module in this package (except ``common``) is one or more subcommands:
it exposes ``add_parser(sub)``, which adds its subparsers and sets
``func`` on each, so a new command is a new module and nothing here changes.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import Interrupted, LbcnnError

# the order subcommands are listed in ``lbcnn --help``; modules not named here follow
_ORDER = ("search", "optimize", "train", "finetune", "quantize", "export", "info", "evaluate",
          "predict", "mcu", "transfer")


def _command_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if m.name != "common"}
    return [n for n in _ORDER if n in found] + sorted(found - set(_ORDER))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or "%(default)" in text or not action.option_strings):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        return f"{text} (default: {shown})".lstrip()


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other lbcnn error (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _OneLineParser(prog="lbcnn", formatter_class=_Formatter,
                                     description="Light binary CNNs for TinyML: search, optimize, "
                                                 "train, evaluate and deploy.")
    parser.add_argument("--version", action="version", version=f"lbcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_OneLineParser)
    _inherit_formatter(sub)
    for name in _command_modules():
        module = importlib.import_module(f".{name}", __name__)
        module.add_parser(sub)
        for cmd, p in sub.choices.items():
            if p.get_default("func") is None and hasattr(module, "run") and cmd == name:
                p.set_defaults(func=module.run)
    return parser


def _inherit_formatter(sub) -> None:
    """Every subcommand shows defaults and its help as its description."""
    plain = sub.add_parser

    def add_parser(name, **kw):
        kw.setdefault("formatter_class", _Formatter)
        if "help" in kw:
            kw.setdefault("description", kw["help"][:1].upper() + kw["help"][1:] + ".")
        return plain(name, **kw)

    sub.add_parser = add_parser


def main(argv=None) -> int:
    from ..outputs import forget_created, remove_empty_created

    parser = build_parser()
    args = parser.parse_args(argv)
    forget_created()
    try:
        from ..settings import check_environment
        check_environment()
        return args.func(args)
    except Interrupted as exc:
        print(f"lbcnn: {exc}", file=sys.stderr)
        return 130
    except LbcnnError as exc:
        remove_empty_created()
        print(f"lbcnn: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        remove_empty_created()
        print(f"lbcnn: error: {_out_of_memory(args, sys.exc_info()[2])}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lbcnn: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        remove_empty_created()
        raise


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:1997] + "..."


def _out_of_memory(args, tb) -> str:
    """A MemoryError that no plan foresaw: name the command and the lbcnn step that asked,
    rather than guess a fix that may be the wrong one."""
    where = None
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("lbcnn.") and not module.startswith("lbcnn.cli"):
            where = f"{module}.{tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    step = f" in {where}" if where else ""
    from ..memory import human_bytes
    from ..settings import available_memory_bytes
    return (f"out of memory{step} during `lbcnn {args.command}` "
            f"({human_bytes(available_memory_bytes())} free now); this step has no memory "
            f"plan yet: please report it, and try a smaller input or LBCNN_MEMORY_GB")


if __name__ == "__main__":
    sys.exit(main())
