"""Compare two λ-trajectory records of the test suite (``tests/trajectory_recorder.py``).

    python benchmarks/compare_trajectories.py before.json after.json

Prints, for the tests both records ran, how many fits and λ values agree bit for bit, and
every fit that differs; exits 1 if any does.
"""

from __future__ import annotations

import json
import sys


def main(before_path: str, after_path: str) -> int:
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    shared = sorted(set(before) & set(after))
    fits = values = 0
    differ = []
    for test in shared:
        a, b = before[test], after[test]
        if len(a) != len(b):
            differ.append(f"{test}: {len(a)} fits before, {len(b)} after")
            continue
        for k, (x, y) in enumerate(zip(a, b)):
            fits += 1
            values += sum(len(row) for row in x["lambda"])
            if x["lambda"] != y["lambda"]:
                differ.append(f"{test} fit {k}: λ trajectory differs")
            elif x["params"] != y["params"]:
                differ.append(f"{test} fit {k}: final parameters differ")
    print(
        f"{len(shared)} tests in both ({len(set(before) - set(after))} only before, "
        f"{len(set(after) - set(before))} only after): {fits} fits, {values} λ values compared"
    )
    for line in differ:
        print("DIFFERS:", line)
    print("bit-identical" if not differ else f"{len(differ)} fit(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
