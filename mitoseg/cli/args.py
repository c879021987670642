"""What the command-line scripts share about their flags and output: the parser whose errors are
one line, the positive-number flag types, --version, hyphenated flags with their old spellings as
hidden aliases, and where a line of output goes. Standard library only (run_study.py runs on login
nodes)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """Bad flags -> ONE line naming the flag (argparse's default prints the usage block first), exit 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # `--output-dir=~/runs` arrives unexpanded (a shell expands ~ only at the start of a word): a flag's
        # ~ is the home folder, never a folder named "~" in the current one (no flag's value starts with ~).
        namespace, extras = super().parse_known_args(args, namespace)
        for name, value in vars(namespace).items():
            if isinstance(value, str) and value.startswith("~"):
                setattr(namespace, name, os.path.expanduser(value))
        return namespace, extras


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


class _VersionAction(argparse.Action):
    """--version: the project's version and git commit (mitoseg/core/version.py), read only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "print the version and git commit of this code and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from mitoseg.core.version import version_line
        print(version_line())
        parser.exit(0)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionAction)


def add_flag(parser, flag: str, *old: str, **kwargs) -> None:
    """`flag` as documented (hyphenated); the `old` spellings still accepted but not shown in --help."""
    if "action" not in kwargs:   # the documented name in --help, whatever the dest the code reads
        kwargs.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
    parser.add_argument(flag, **kwargs)
    dest = kwargs.get("dest") or flag.lstrip("-").replace("-", "_")
    for alias in old:
        parser.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                            **{k: v for k, v in kwargs.items() if k in ("type", "action", "choices")})


def missing_extra(err: ImportError, extra: str) -> str:
    """The one line for a package this command needs and this Python lacks (a login node's base
    install has the standard library alone)."""
    return (f"error: {err.name or err} is not installed here ({sys.executable}); this command needs the "
            f"[{extra}] extra: pip install 'mitoseg-hpo[{extra}]' (or run it in the training environment)")


def say(message: str = "") -> None:
    """A line of a command's output: `error: ...` lines on stderr (kept apart from the results, and
    in the scheduler's error file), everything else on stdout."""
    print(message, file=sys.stderr if message.startswith("error:") else sys.stdout, flush=True)


def invoked_as(console: str) -> str:
    """How the user started this command, to suggest the next one: `python run_study.py`, or the
    installed console command `console`, or `python -m mitoseg.cli.<name>`."""
    argv0 = Path(sys.argv[0])
    if argv0.parent.name == "cli" and argv0.parent.parent.name == "mitoseg":
        return f"python -m mitoseg.cli.{argv0.stem}"
    return f"python {argv0.name}" if argv0.suffix == ".py" else console
