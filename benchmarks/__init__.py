"""The benchmark harness (not installed): ``python -m benchmarks COMMAND`` from the repository
root, with the ``benchmarks/requirements.txt`` packages installed.

    python -m benchmarks table1 --out runs/table1            # quadratic (Table 1)
    python -m benchmarks table2 --out runs/table2 --data-dir ../shared/data/mnist
    python -m benchmarks table3 --out runs/table3 --data-dir ../shared/data/ptb
    python -m benchmarks cost --out runs/cost --data-dir ../shared/data/mnist
    python -m benchmarks ttq --out runs/ttq                  # time to quality
    python -m benchmarks --help                              # every command, studies included

Each table writes ``table.md`` (the paper's format), ``runs.jsonl`` (one JSON record per run)
and PNG plots into ``--out`` (``ttq``: ``summary.json``, ``table.md``, ``curves.png``).
``--smoke`` runs a tiny scale of the same protocol. The models, data modules and the quadratic
problem the benchmarks train are the experiments' (:mod:`experiments`).
"""
