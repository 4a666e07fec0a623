"""``lightning-hyperopt``: LightningCLI with any LightningModule and optional datamodule.

    lightning-hyperopt fit --config examples/configs/quadratic/base.yaml \
                           --config examples/configs/quadratic/clip.yaml

A config's ``class_path`` entries resolve against the installed packages and, as under
``python -m``, the current directory: a project's own modules (or this repository's
``experiments``, from its root) need no install.
"""

from __future__ import annotations

import os
import sys

from pytorch_lightning.cli import LightningCLI


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI (``args=None`` reads ``sys.argv``), returned for inspection."""
    return LightningCLI(
        model_class=None,
        datamodule_class=None,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point ``lightning-hyperopt``: class paths resolve in the current directory
    too (a console script's ``sys.path`` starts at its own folder, not there)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    build_cli()


if __name__ == "__main__":
    main()
