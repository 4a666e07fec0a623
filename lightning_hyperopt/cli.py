"""``lightning-hyperopt``: LightningCLI with any LightningModule and optional datamodule.

    lightning-hyperopt fit --config examples/configs/quadratic/base.yaml \
                           --config examples/configs/quadratic/clip.yaml
"""

from __future__ import annotations

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
    """Console entry point ``lightning-hyperopt``."""
    build_cli()


if __name__ == "__main__":
    main()
