"""docs/architecture.md is true to the code: every file it lists exists where it says, every
module of the library is on it, every class or function it names is defined, and the engine's
surface it lists is the engine's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightning_hyperopt import L2Penalty, TangentEngine
from lightning_hyperopt.core import FirstOrder

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
SECTION = re.compile(r"^### `([\w/]+/)`", re.M)
ROW = re.compile(r"^\| ((?:`[^`]+`(?:, )?)+) \|", re.M)
TICKED = re.compile(r"`([^`\s]+)`")
#: names the page uses that other packages define
EXTERNAL = {
    "DataLoader", "LightningCLI", "LightningModule", "Trainer", "Callback", "RULES", "TASKS",
    "SCRIPTS", "MODELS", "EarlyStopping",
}  # fmt: skip


def sections() -> list[tuple[str, str]]:
    """(folder, its text) for each ``### `folder/` `` section."""
    found = list(SECTION.finditer(PAGE))
    ends = [m.start() for m in found[1:]] + [len(PAGE)]
    return [(m.group(1), PAGE[m.end() : end]) for m, end in zip(found, ends)]


def test_every_listed_file_exists_in_its_folder():
    listed = 0
    for folder, text in sections():
        assert (ROOT / folder).is_dir(), f"{folder} does not exist"
        for row in ROW.finditer(text):
            for name in TICKED.findall(row.group(1)):
                listed += 1
                assert (ROOT / folder / name).exists(), f"{folder}{name} does not exist"
    assert listed > 40


@pytest.mark.parametrize("package", ["lightning_hyperopt", "experiments", "benchmarks"])
def test_every_module_is_on_the_page(package):
    named = set(TICKED.findall(PAGE))
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name != package:
            continue  # a subpackage's face; its folder is listed
        assert path.name in named or f"{path.parent.name}/" in named, (
            f"{path.relative_to(ROOT)} is not on docs/architecture.md"
        )


def definitions() -> set[str]:
    names = set()
    for package in ("lightning_hyperopt", "experiments", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names |= set(re.findall(r"^\s*(?:class|def) (\w+)", text, re.M))
            names |= set(re.findall(r"^(\w+)(?:: [^=]+)? =", text, re.M))
    return names


def test_every_class_and_function_named_is_defined():
    defined = definitions()
    missing = []
    for token in set(TICKED.findall(PAGE)):
        for part in re.findall(r"\b([A-Za-z_]\w*)(?=[.(]|$)", token.split("(")[0]):
            if part[0].isupper() and part not in EXTERNAL and part not in defined:
                missing.append(part)
    assert not missing, f"named on the page but defined nowhere: {sorted(set(missing))}"


def test_the_engines_surface_is_the_engines():
    text = PAGE.split("calls these of its members:\n\n", 1)[1].split("\n", 1)[0]
    w = torch.nn.Parameter(torch.ones(2))
    engine = TangentEngine(FirstOrder(), {"l2": L2Penalty(0.1)}, torch.optim.SGD([w], lr=0.1))
    names = TICKED.findall(text)
    assert len(names) > 15
    for name in names:
        target = engine
        for attribute in name.split("."):
            assert hasattr(target, attribute), f"TangentEngine has no {name}"
            target = getattr(target, attribute)
