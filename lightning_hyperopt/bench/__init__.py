"""Benchmarks that reproduce the paper's tables: runners, records, tables and plots.

    python -m lightning_hyperopt.bench table1 --out runs/table1            # quadratic (Table 1)
    python -m lightning_hyperopt.bench table2 --out runs/table2 --data-dir ../shared/data/mnist
    python -m lightning_hyperopt.bench table3 --out runs/table3 --data-dir ../shared/data/ptb
    python -m lightning_hyperopt.bench cost --out runs/cost --data-dir ../shared/data/mnist
    python -m lightning_hyperopt.bench ttq --out runs/ttq                  # time to quality

Each writes ``table.md`` (the paper's format), ``runs.jsonl`` (one JSON record per run) and
PNG plots into ``--out`` (``ttq``: ``summary.json``, ``table.md``, ``curves.png``; it needs the
``bench`` extra). ``--smoke`` runs a tiny scale of the same protocol.
"""
