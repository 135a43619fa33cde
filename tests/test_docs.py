"""Every code block of README.md and docs/ runs, and the site builds with `mkdocs build --strict`.

- ```python blocks: executed in order, one namespace per page (a later block continues an earlier one), in a
  scratch directory where `cases/` is the repository's;
- ```bash blocks: each `assim validate` / `assim list` line runs through the CLI and must exit 0; each `assim run`,
  `discover`, `train` and `sweep` line has its case (with its `--set` overrides) validated;
- ```console blocks: each `$ assim ...` line runs through the CLI and prints the lines that follow it;
- ```toml blocks parse, and a whole case (with [model], [time] and [observations]) validates.

A block preceded by `<!-- not-run: reason -->` is illustrative only and skipped (used sparingly; the reason is
in the page source). Other fences (text, plain) are not code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from assim.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)\n```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*\S.*-->")


def blocks(page: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, code) of each `lang` block of a page that is not marked not-run."""
    text = "\n" + page.read_text()
    found = []
    for m in FENCE.finditer(text):
        if m.group("lang") == lang and not NOT_RUN.search(m.group("before")):
            found.append((text[: m.start("code")].count("\n"), m.group("code")))
    return found


def _ids(pages):
    return [p.relative_to(ROOT).as_posix() for p in pages]


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working directory whose `cases/` is the repository's, so the examples' relative paths hold."""
    (tmp_path / "cases").symlink_to(ROOT / "cases")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _page_checks(page: Path, scope: dict) -> None:
    """What an example's own prose promises, beyond running without an error."""
    if page.name == "own-data.md":  # the eofs SST example without a case file (was the README's test)
        assert scope["analysis"].attrs["converged"] == 1
        assert np.isfinite(scope["analysis"]["increment"].values[scope["grid"].active]).all()


PYTHON_PAGES = [p for p in PAGES if blocks(p, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_ids(PYTHON_PAGES))
def test_python_blocks_run(page, scratch):
    scope: dict = {"__name__": "__docs__"}
    for line, code in blocks(page, "python"):
        padded = "\n" * (line - 1) + code  # tracebacks point at the page's own line numbers
        exec(compile(padded, str(page), "exec"), scope)  # noqa: S102
    _page_checks(page, scope)


def _commands(code: str) -> list[list[str]]:
    """The command lines of a bash block (continuations joined, comments dropped), split as the shell would."""
    joined = code.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def _as_validate(args: list[str]) -> list[str] | None:
    """`assim run CASE --set k=v ...` → `assim validate CASE --set k=v ...` (None for other commands)."""
    if len(args) < 3 or args[0] != "assim" or args[1] not in ("run", "discover", "train", "sweep"):
        return None
    out, i = ["validate", args[2]], 3
    while i < len(args):
        if args[i] == "--set":
            out += ["--set", args[i + 1]]
        i += 2 if args[i].startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--") else 1
    return out


BASH_PAGES = [p for p in PAGES if any("assim " in c for _, c in blocks(p, "bash"))]


@pytest.mark.parametrize("page", BASH_PAGES, ids=_ids(BASH_PAGES))
def test_bash_assim_commands(page, scratch, capsys):
    ran = 0
    for line, code in blocks(page, "bash"):
        for args in _commands(code):
            if args[:1] != ["assim"]:
                continue  # installation lines: .ci/run runs those
            argv = args[1:] if args[1] in ("validate", "list") else _as_validate(args)
            if argv is None:
                continue
            status = main(argv)
            assert status == 0, f"{page.name}:{line}: `{shlex.join(args)}` → exit {status}: {capsys.readouterr().err}"
            ran += 1
    assert ran


CONSOLE_PAGES = [p for p in PAGES if blocks(p, "console")]


@pytest.mark.parametrize("page", CONSOLE_PAGES, ids=_ids(CONSOLE_PAGES))
def test_console_transcripts(page, scratch, capsys):
    for line, code in blocks(page, "console"):
        lines = code.splitlines()
        starts = [i for i, text in enumerate(lines) if text.startswith("$ assim ")]
        assert starts, f"{page.name}:{line}: a console block without a `$ assim` line"
        for k, i in enumerate(starts):
            expected = "\n".join(lines[i + 1 : starts[k + 1] if k + 1 < len(starts) else None]).strip()
            capsys.readouterr()
            main(shlex.split(lines[i][2:])[1:])
            got = capsys.readouterr()
            assert (got.out + got.err).strip() == expected, f"{page.name}:{line + i}"


TOML_PAGES = [p for p in PAGES if blocks(p, "toml")]


@pytest.mark.parametrize("page", TOML_PAGES, ids=_ids(TOML_PAGES))
def test_toml_blocks(page, scratch, capsys):
    for line, code in blocks(page, "toml"):
        data = tomllib.loads(code)  # every fragment is valid TOML
        if {"model", "time", "observations"} <= set(data):  # a whole case: it validates
            path = scratch / f"{page.stem}_{line}.toml"
            path.write_text(code)
            assert main(["validate", str(path)]) == 0, f"{page.name}:{line}: {capsys.readouterr().err}"


def test_every_page_is_in_the_nav():
    text = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES[1:]:
        assert page.relative_to(ROOT / "docs").as_posix() in text, f"{page} is not in mkdocs.yml's nav"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[test]' installs it)"
)
def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "case-file" / "index.html").exists()


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_case_reference_lists_every_table_key_and_kind():
    """The generated case-file reference has a section per schema class with a row per key, and every kind."""
    from pydantic import BaseModel

    from assim.case.config import Case
    from assim.case.schema import BackgroundConfig, ModelConfig, NetworkConfig, SolverConfig

    text = _generator().case_reference()
    sections = {
        m.group(1): m.group(2) for m in re.finditer(r"^## .*?\{ #(\w+) \}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    }
    seen, queue = set(), [Case]
    while queue:
        cls = queue.pop()
        if cls in seen:
            continue
        seen.add(cls)
        body = sections[cls.__name__.lower()]
        for name, info in cls.model_fields.items():
            assert f"| `{name}` |" in body, f"{cls.__name__}.{name} missing from the case-file reference"
            stack = [info.annotation]
            while stack:
                tp = stack.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    queue.append(tp)
                else:
                    stack.extend(a for a in getattr(tp, "__args__", ()) if not isinstance(a, (str, int, float)))
                    stack.extend(getattr(tp, "__origin__", None) and [tp.__origin__] or [])
    for union in (ModelConfig, BackgroundConfig, SolverConfig, NetworkConfig):
        for member in union.__origin__.__args__:
            kind = member.model_fields["kind"].annotation.__args__[0]
            assert f'`kind = "{kind}"`' in text, kind
    assert "| `noise` | float" in text and "> 0" in sections["observationsconfig"]
