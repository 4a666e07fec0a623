"""Every code block of the documentation (docs/**/*.md and README.md) is executed or checked.

- ```python blocks run: the blocks of one page in order, in one namespace (a page builds up
  its example), in a temporary working directory (logs and checkpoints land there).
- ```yaml blocks parse; a complete LightningCLI config (it has a ``model`` key) runs a few
  steps through ``lightning_hyperopt.cli.build_cli``, and a callbacks-only overlay (only a
  ``trainer`` key, with ``callbacks`` or ``callbacks+``) is instantiated on top of
  ``examples/configs/quadratic/base.yaml`` (every key, type and value checked; it is meant for
  the reader's model, so it is not fitted).
- ```bash blocks: every ``--config`` file they name exists; every benchmark command
  (``python -m benchmarks …``) parses with the runner's current flags; every file
  or test a page cites (``tests/…py::test_name``, ``benchmarks/…py``, ``examples/…yaml``)
  exists.
- README.md: its links into docs/ resolve, and its commands and usage snippet are the
  quickstart's, verbatim.
"""

from __future__ import annotations

import re
import shlex
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_hyperopt.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
QUICKSTART = DOCS / "quickstart.md"
BASE_CONFIG = ROOT / "examples" / "configs" / "quadratic" / "base.yaml"
PAGES = [*sorted(DOCS.rglob("*.md")), README]

# a fence opens with ``` + language at any indentation and closes with ``` at the same one
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, dedented source) of every ``lang`` block of ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") == lang:
            line = text.count("\n", 0, m.start()) + 1
            out.append((line, textwrap.dedent(m.group("body"))))
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def pages_with(lang: str) -> list[Path]:
    return [p for p in PAGES if blocks(p, lang)]


def test_the_extractor_sees_the_documentation():
    assert QUICKSTART in PAGES and README in PAGES
    assert len(blocks(QUICKSTART, "python")) >= 3
    assert len(blocks(QUICKSTART, "yaml")) >= 2
    indented = "- item:\n\n    ```python\n    x = 1\n    ```\n"
    tmp_text = [m.group("body") for m in FENCE.finditer(indented)]
    assert [textwrap.dedent(b) for b in tmp_text] == ["x = 1\n"]


@pytest.fixture
def one_thread():
    """Tiny models run 10× slower with two torch threads on two busy cores; one is plenty."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", pages_with("python"), ids=rel)
def test_python_snippets_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_snippet_{page.stem.replace('-', '_')}"}
    start = time.perf_counter()
    for line, source in blocks(page, "python"):
        code = compile(source, f"{rel(page)}:{line}", "exec")
        exec(code, namespace)
    # every page together must stay well under a minute: keep each page's examples small
    assert time.perf_counter() - start < 30, f"{rel(page)}'s snippets are too slow"


def yaml_blocks() -> list[tuple[Path, int, str]]:
    return [(p, line, src) for p in pages_with("yaml") for line, src in blocks(p, "yaml")]


@pytest.mark.parametrize(
    "page, line, source", yaml_blocks(), ids=[f"{rel(p)}:{n}" for p, n, _ in yaml_blocks()]
)
def test_yaml_snippets_parse_and_configs_run(page, line, source, tmp_path, monkeypatch, one_thread):
    config = yaml.safe_load(source)
    assert isinstance(config, dict), f"{rel(page)}:{line} is not a YAML mapping"
    if "model" in config:  # a complete config: it runs
        configs, run = [], True
    elif set(config) == {"trainer"} and {"callbacks", "callbacks+"} & set(config["trainer"]):
        # a callbacks overlay for the reader's own model: the parser and the constructors
        # check every key, type and value on top of the quadratic problem's config
        configs, run = [BASE_CONFIG], False
    else:
        return  # a fragment: parsing is all there is to check
    monkeypatch.chdir(tmp_path)
    snippet = tmp_path / "snippet.yaml"
    snippet.write_text(source, encoding="utf-8")
    args = ["fit"] if run else []
    for c in [*configs, snippet]:
        args += ["--config", str(c)]
    args += [
        "--trainer.max_steps=5",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = build_cli(args, run=run)
    assert cli.trainer.global_step == (5 if run else 0)


CONFIG_ARG = re.compile(r"--config[ =](\S+)")


@pytest.mark.parametrize("page", pages_with("bash"), ids=rel)
def test_bash_snippets_name_existing_configs(page):
    for line, source in blocks(page, "bash"):
        for path in CONFIG_ARG.findall(source):
            if path.endswith(("model.yaml", "tune.yaml")):  # placeholders for the reader's own
                continue
            assert (ROOT / path).is_file(), f"{rel(page)}:{line}: {path} does not exist"


BENCH_COMMAND = re.compile(r"^python -m benchmarks (.+)$")


def benchmark_parser(argv: list[str]):
    """The parser of a ``python -m benchmarks`` command line: a script's own, or the tables'."""
    import importlib

    from benchmarks.cli import SCRIPTS, build_parser

    if argv and argv[0] in SCRIPTS:
        return importlib.import_module(SCRIPTS[argv[0]][0]).build_parser(), argv[1:]
    return build_parser(), argv


@pytest.mark.parametrize("page", pages_with("bash"), ids=rel)
def test_bash_snippets_benchmark_commands_parse(page):
    for line, source in blocks(page, "bash"):
        for command in source.splitlines():
            m = BENCH_COMMAND.match(command.strip())
            if m:
                parser, argv = benchmark_parser(shlex.split(m.group(1)))
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{rel(page)}:{line}: {command.strip()!r} does not parse")


REPO_PATH = re.compile(
    r"\b((?:tests|benchmarks|experiments|examples|lightning_hyperopt)/[\w/.-]+\.(?:py|yaml))"
    r"(?:::(\w+))?"
)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_files_and_tests_the_docs_cite_exist(page):
    for m in REPO_PATH.finditer(page.read_text(encoding="utf-8")):
        path, name = ROOT / m.group(1), m.group(2)
        assert path.is_file(), f"{rel(page)} cites {m.group(1)}, which does not exist"
        if name:
            assert f"def {name}(" in path.read_text(encoding="utf-8"), (
                f"{rel(page)} cites {m.group(0)}, which does not exist"
            )


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_readme_links_into_the_docs_resolve():
    links = [m.group(1) for m in LINK.finditer(README.read_text(encoding="utf-8"))]
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local), "README links to no docs page"
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_readme_commands_are_the_quickstarts():
    quickstart = QUICKSTART.read_text(encoding="utf-8")
    for line, source in blocks(README, "bash"):
        assert source in quickstart, f"README.md:{line}: this command is not in the quickstart"


def test_readme_usage_snippet_is_the_quickstarts():
    readme = [source for _, source in blocks(README, "python")]
    quickstart = [source for _, source in blocks(QUICKSTART, "python")]
    for source in readme:
        assert source in quickstart, "README.md's usage snippet differs from the quickstart's"
