"""``python -m lightning_hyperopt.bench``: see :mod:`lightning_hyperopt.bench.cli`."""

from lightning_hyperopt.bench.cli import main

if __name__ == "__main__":
    main()
