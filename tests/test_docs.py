"""The documentation says only what the code does: its generated parts are current, every command it
shows parses with the project's own parsers, every relative link resolves, and no page names an
internal issue number. What the command check proves and does not: tests/doc_commands.py."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_commands import REPO, Command, check_commands, doc_commands, doc_files

GENERATE = REPO / "docs" / "generate.py"
README_MAX_LINES = 200


def _generator():
    from tests.doc_commands import _generator as load
    return load()


def test_generated_docs_are_current():
    """docs/cli.md = every script's --help; the results table of docs/outputs.md = `python -m mitoseg.core.results`."""
    proc = subprocess.run([sys.executable, str(GENERATE), "--check"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_every_script_is_in_the_cli_reference():
    scripts = {p.name for p in REPO.glob("*.py") if 'if __name__ == "__main__"' in p.read_text()}
    assert scripts <= set(_generator().SCRIPTS), scripts - set(_generator().SCRIPTS)


def test_the_docs_show_commands_of_every_script():
    shown = {c.target for c in doc_commands() if c.kind == "script"}
    assert set(_generator().SCRIPTS) <= shown, set(_generator().SCRIPTS) - shown
    assert any(c.source.startswith("README.md") for c in doc_commands())


def test_every_documented_command_parses():
    failures = check_commands(doc_commands())
    assert not failures, "documented commands that fail their check:\n" + "\n".join(
        f"  {cmd.source}: {cmd.text}\n      -> {why}" for cmd, why in failures)


@pytest.mark.parametrize("args, expected", [
    (["submit", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["confirm", "--study-dir", "S", "--seeds", "many"], "invalid int value"),
    (["confirm", "--study-dir", "S", "--seeds", "3", "stray", "--top", "2"], "taken as pass-through"),
    (["status"], "required"),
])
def test_the_command_check_can_fail(args, expected):
    failures = check_commands([Command("test", "", "script", "run_study.py", args)])
    assert len(failures) == 1 and expected in failures[0][1], failures


def test_the_command_check_sees_missing_programs():
    bad = [Command("test", "", "script", "no_such_script.py", []), Command("test", "", "shell", "no_such.sh", []),
           Command("test", "", "module", "mitoseg.no_such_module", []),
           Command("test", "", "console", "mitoseg-no-such-command", [])]
    assert len(check_commands(bad)) == 4


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in doc_files():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_no_internal_issue_numbers():
    pattern = re.compile(r"\bissues?\s*#?\s*\d+|(?<![\w&])#\d+\b", re.I)
    found = [f"{page.relative_to(REPO)}: {m.group(0)}" for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
             for m in pattern.finditer(page.read_text())]
    assert found == []


def test_the_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details belong in docs/"
