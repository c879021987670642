"""The commands the documentation shows, and a cheap check of each (used by tests/test_docs.py).

`doc_commands()` extracts every command line of a shell code block (```bash, ```sh, ```console or
unlabelled) in README.md, docs/*.md, examples/README.md and the strategy document that invokes one of the project's
programs: `python SCRIPT.py ...` for a script in this repository, `python -m mitoseg...`, a console
command declared in pyproject.toml (`mitoseg-...`), or `bash`/`qsub`/`sbatch` of one of the
repository's shell scripts.

`check_commands()` checks each one without running it:
- a Python script or console command: the script is started in a subprocess with its real
  arguments, and argparse's outermost `parse_known_args` is patched to stop the program right after
  parsing. So the script exists, imports, builds its parser, and that parser accepts every flag and
  every value of the command (types, choices, required flags, mutually exclusive groups, no
  leftover argument). It does NOT prove that the command would succeed when run: files it names,
  data, schedulers and whatever the program checks after parsing are not exercised.
- `python -m MODULE`: the module can be found (its output, where it matters, is compared by a
  test of its own, e.g. the results-JSON table in docs/outputs.md).
- a shell script (`bash X.sh`, `qsub ... X.sh`, `sbatch ... X.sh`): it exists and `bash -n` parses
  it; the scheduler's own flags are not checked.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
PREFIXES = {"time", "/usr/bin/time", "exec", "sudo", "nohup"}
OPERATORS = {"&&", "||", ";", "|", "&"}


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "examples" / "README.md",
            REPO / "Hyperparameter_Optimization_Strategy.md"]


@dataclass
class Command:
    source: str      # file:line
    text: str        # the command as written (continuations joined)
    kind: str        # script | console | module | shell
    target: str      # script path, console name, module name or shell script path
    args: list


def _shell_lines(path: Path):
    """(line number, logical line) of every shell code block; `\\` continuations joined."""
    lang, pending, start = None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence:
            lang = fence.group(1).lower() if lang is None else None
            continue
        if lang not in SHELL_LANGS:
            continue
        if not pending:
            start = number
        text = re.sub(r"^\s*\$\s+", "", line) if not pending else line
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        yield start, pending + text
        pending = ""


def _segments(line: str):
    """The simple commands of a shell line (split at && || ; | &), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segment = []
    for token in lexer:
        if token in OPERATORS:
            yield segment
            segment = []
        else:
            segment.append(token)
    yield segment


def _strip_prefix(tokens: list) -> list:
    while tokens and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]) or tokens[0] in PREFIXES):
        tokens = tokens[1:]
    return tokens


def _is_python(token: str) -> bool:
    return re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", token) is not None


def _generator():
    """docs/generate.py as a module (it is a script, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def console_commands() -> dict:
    return _generator().console_commands()


def _classify(tokens: list):
    """(kind, target, args) when the simple command invokes a project program, else None."""
    tokens = _strip_prefix(tokens)
    if not tokens:
        return None
    head = tokens[0]
    if _is_python(head) and len(tokens) > 1:
        if tokens[1] == "-m" and len(tokens) > 2 and tokens[2].split(".")[0] == "mitoseg":
            return "module", tokens[2], tokens[3:]
        if tokens[1].endswith(".py"):
            return "script", tokens[1], tokens[2:]
        return None
    if head.startswith("mitoseg-"):
        return "console", head, tokens[1:]
    if head in ("bash", "sh", "qsub", "sbatch"):
        scripts = [t for t in tokens[1:] if t.endswith(".sh")]
        return ("shell", scripts[-1], []) if scripts else None
    return None


def doc_commands() -> list:
    found = []
    for path in doc_files():
        for number, line in _shell_lines(path):
            for segment in _segments(line):
                kind = _classify(segment)
                if kind:
                    found.append(Command(f"{path.relative_to(REPO)}:{number}", " ".join(segment), *kind))
    return found


# Runs in a subprocess: for each item, start the program with its arguments and stop it right after
# argparse has parsed them (the outermost parse_known_args; sub-command parsers run inside it).
HARNESS = r'''
import argparse, contextlib, importlib, io, json, os, runpy, sys
class Parsed(BaseException):
    pass
original = argparse.ArgumentParser.parse_known_args
depth = [0]
def parse_known_args(self, args=None, namespace=None):
    depth[0] += 1
    try:
        namespace, extras = original(self, args, namespace)
    finally:
        depth[0] -= 1
    if depth[0] == 0:
        raise Parsed(extras, swallowed(namespace))
    return namespace, extras
argparse.ArgumentParser.parse_known_args = parse_known_args
# A pass-through argument (nargs=REMAINDER, e.g. qsub/sbatch arguments after `--`) takes whatever
# follows the first value it sees, flags included: such a value must start with `--` to be meant.
remainders = set()
original_add = argparse._ActionsContainer.add_argument
def add_argument(self, *args, **kwargs):
    action = original_add(self, *args, **kwargs)
    if action.nargs == argparse.REMAINDER:
        remainders.add(action.dest)
    return action
argparse._ActionsContainer.add_argument = add_argument
def swallowed(namespace):
    return [" ".join(value) for dest, value in vars(namespace).items()
            if dest in remainders and value and value[0] != "--"]
out = []
for kind, target, args in json.load(sys.stdin):
    err = io.StringIO()
    result = "ran to its end without parsing any argument"
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if kind == "script":
                sys.argv = [target, *args]
                sys.path[0] = os.path.dirname(os.path.abspath(target))
                runpy.run_path(target, run_name="__main__")
            else:
                module, function = target.split(":")
                sys.argv = [module, *args]
                getattr(importlib.import_module(module), function)()
    except Parsed as parsed:
        extras, taken = parsed.args
        result = ("unrecognized arguments: " + " ".join(extras) if extras else
                  "taken as pass-through arguments (not after --): " + "; ".join(taken) if taken else "")
    except SystemExit as exit:
        result = "" if exit.code in (0, None) else (err.getvalue().strip().splitlines() or [f"exit {exit.code}"])[-1]
    except Exception as exc:
        result = f"{type(exc).__name__}: {exc}"
    out.append(result)
print(json.dumps(out))
'''


def _run_parsers(items: list) -> list:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRID_CONFIG", "DATA_DIR", "STUDY_DIR", "MITOSEG_SITE", "CELLS_PER_GPU")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-c", HARNESS], input=json.dumps(items), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return [f"the parse harness failed: {proc.stderr.strip()[-500:]}"] * len(items)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _static_check(cmd: Command, consoles: dict):
    """A failure message for what can be decided without starting Python, '' when fine, None to parse."""
    if cmd.kind == "shell":
        path = REPO / cmd.target
        if not path.is_file():
            return f"no such script {cmd.target}"
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        return proc.stderr.strip() if proc.returncode else ""
    if cmd.kind == "module":
        import importlib.util
        return "" if importlib.util.find_spec(cmd.target) else f"no module {cmd.target}"
    if cmd.kind == "console" and cmd.target not in consoles:
        return f"console command {cmd.target} is not declared in pyproject.toml [project.scripts]"
    if cmd.kind == "script" and not (REPO / cmd.target).is_file():
        return f"no such script {cmd.target}"
    return None


def check_commands(commands: list) -> list:
    """(command, failure) for every command that fails its check."""
    consoles = console_commands()
    failures, to_parse = [], []
    for cmd in commands:
        static = _static_check(cmd, consoles)
        if static is None:
            to_parse.append(cmd)
        elif static:
            failures.append((cmd, static))
    items = [[c.kind, consoles.get(c.target, c.target), c.args] for c in to_parse]
    for cmd, result in zip(to_parse, _run_parsers(items) if items else []):
        if result:
            failures.append((cmd, result))
    return failures


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="List the documented commands that fail their check.")
    parser.add_argument("--all", action="store_true", help="also list the commands that pass")
    args = parser.parse_args(argv)
    commands = doc_commands()
    failures = check_commands(commands)
    for cmd, why in failures:
        print(f"{cmd.source}: {cmd.text}\n    -> {why}")
    if args.all:
        failed = {id(cmd) for cmd, _ in failures}
        print("\n".join(f"ok  {c.source}: {c.text}" for c in commands if id(c) not in failed))
    print(f"{len(commands)} documented commands, {len(failures)} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
