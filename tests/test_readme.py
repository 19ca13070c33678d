"""Every snippet in README.md runs as written: Python blocks are executed in a temporary
directory; shell blocks' commands are checked to exist (console scripts, make targets, modules)
and their Hydra overrides to compose, without running any training (a full run is ``slow``)."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nsr._config import config_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
APPS = {"nsr-train": "train", "nsr-extract": "extract", "nsr-compare": "compare"}


def code_blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of ``text`` in language ``lang``, in order."""
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(block: str) -> list[list[str]]:
    """Commands of a shell block as argument lists: comments dropped, ``<placeholder>`` kept as a word."""
    cmds = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            cmds.append(words)
    return cmds


PY_BLOCKS = code_blocks(README.read_text(), "python")
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOC_PY_BLOCKS = [(p.name, b) for p in DOCS for b in code_blocks(p.read_text(), "python")]
SH_COMMANDS = [c for b in code_blocks(README.read_text(), "bash") for c in shell_commands(b)]


def test_readme_has_snippets():
    assert PY_BLOCKS and SH_COMMANDS


@pytest.mark.parametrize("i", range(len(PY_BLOCKS)))
def test_python_snippet_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"readme_snippet_{i}.py"
    path.write_text(PY_BLOCKS[i])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a snippet that warns does not run as written
        runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize("i", range(len(DOC_PY_BLOCKS)))
def test_docs_python_snippet_runs(i, tmp_path, monkeypatch):
    """The Python blocks of docs/*.md run as written too."""
    monkeypatch.chdir(tmp_path)
    name, block = DOC_PY_BLOCKS[i]
    path = tmp_path / f"{name}_{i}.py"
    path.write_text(block)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runpy.run_path(str(path), run_name="__main__")


def _overrides(words: list[str]) -> list[str]:
    """Hydra overrides of an app command line: sweeps reduced to their first value, placeholders
    such as ``<run>`` replaced by a plain word (the config keys are what is checked)."""
    out = []
    for w in words:
        if w.startswith("-"):
            continue
        w = re.sub(r"<[^>]*>", "run", w)
        key, _, value = w.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


def _check_app(words: list[str]) -> None:
    table = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = re.findall(r"^([\w-]+)\s*=", table, flags=re.M)  # (tomllib needs Python 3.11)
    assert words[0] in scripts, f"{words[0]} is not a console script of nsr"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        compose(APPS[words[0]], overrides=_overrides(words[1:]))


def _check_make(words: list[str]) -> None:
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for w in words[1:]:
        if "=" not in w:
            assert w in targets, f"make {w}: no such target in the Makefile"


def _check_python_m(words: list[str]) -> None:
    import importlib.util

    module = words[words.index("-m") + 1]
    assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"


@pytest.mark.parametrize("words", SH_COMMANDS, ids=[" ".join(c)[:60] for c in SH_COMMANDS])
def test_shell_command_exists(words):
    if words[0] in APPS:
        _check_app(words)
    elif words[0] == "make":
        _check_make(words)
    elif words[0].startswith("python") and "-m" in words:
        _check_python_m(words)
    else:
        pytest.skip(f"not checked: {words[0]}")


def test_overrides_of_a_bad_key_are_caught():
    """The check above can fail: an option that does not exist does not compose."""
    with pytest.raises(Exception, match="nonexistent"):
        _check_app(["nsr-train", "nonexistent_group=1"])


@pytest.mark.slow
def test_readme_train_then_extract(tmp_path):
    """The README's first app lines for real, shortened: train the default, extract its run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "nsr.train", "trainer.max_epochs=1", f"hydra.run.dir={run}",
                    "trainer.enable_progress_bar=false"], check=True, cwd=tmp_path, env=env)  # fmt: skip
    subprocess.run([sys.executable, "-m", "nsr.extract", f"net={run}", "polygons=true", f"out_dir={tmp_path / 'x'}",
                    f"hydra.run.dir={tmp_path / 'h'}"], check=True, cwd=tmp_path, env=env)  # fmt: skip
    assert (tmp_path / "x" / "stats.json").is_file()
