"""Compare two λ-trajectory records of the test suite (``tests/trajectory_recorder.py``).

    python -m benchmarks compare-trajectories before.json after.json

Tests are matched by their id, then by their name alone (a test file moved to another folder
keeps its test names), then by ``--renamed OLD=NEW`` (test names, parameters included). A test
that runs more fits than before (a comparison added) is compared on the fits both have, in
order, and reported as extended. Prints how many fits, engines and λ values agree bit for bit
and every one that differs; exits 1 if any does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def _load(path: str) -> dict[str, dict[str, list[Any]]]:
    with open(path) as f:
        records = json.load(f)
    return {k: v if isinstance(v, dict) else {"fits": v, "engines": []} for k, v in records.items()}


def _name(test_id: str) -> str:
    return test_id.split("::", 1)[-1]


def _pairs(
    before: dict, after: dict, renamed: dict[str, str] | None = None
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(matched (before id, after id) pairs, ids only before, ids only after)."""
    renamed = renamed or {}
    pairs = [(k, k) for k in sorted(set(before) & set(after))]
    left = {renamed.get(_name(k), _name(k)): k for k in set(before) - set(after)}
    right = {_name(k): k for k in set(after) - set(before)}
    pairs += [(left[n], right[n]) for n in sorted(set(left) & set(right))]
    return (
        pairs,
        sorted(left[n] for n in set(left) - set(right)),
        sorted(right[n] for n in set(right) - set(left)),
    )


def compare(
    before: dict, after: dict, renamed: dict[str, str] | None = None
) -> tuple[dict[str, int], list[str], list[str]]:
    """(counts of what was compared, one line per difference, one per extended test)."""
    pairs, _, _ = _pairs(before, after, renamed)
    counts = {"tests": len(pairs), "fits": 0, "engines": 0, "values": 0}
    differ, extended = [], []
    for b, a in pairs:
        x, y = before[b], after[a]
        for kind in ("fits", "engines"):
            if len(x[kind]) > len(y[kind]):
                differ.append(f"{a}: {len(x[kind])} {kind} before, {len(y[kind])} after")
                continue
            if len(x[kind]) < len(y[kind]):
                extended.append(f"{a}: {len(x[kind])} {kind} before, {len(y[kind])} after")
            for k, (u, v) in enumerate(zip(x[kind], y[kind])):
                counts[kind] += 1
                lam_u = u["lambda"] if kind == "fits" else u
                lam_v = v["lambda"] if kind == "fits" else v
                counts["values"] += sum(len(row) for row in lam_u)
                if lam_u != lam_v:
                    differ.append(f"{a} {kind[:-1]} {k}: λ trajectory differs")
                elif kind == "fits" and u["params"] != v["params"]:
                    differ.append(f"{a} fit {k}: final parameters differ")
    return counts, differ, extended


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks compare-trajectories", description=__doc__.splitlines()[0]
    )
    parser.add_argument("before", help="the record before the change")
    parser.add_argument("after", help="the record after it")
    parser.add_argument(
        "--renamed",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="a test renamed by the change (names with their parameters)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    before, after = _load(args.before), _load(args.after)
    renamed = dict(pair.split("=", 1) for pair in args.renamed)
    counts, differ, extended = compare(before, after, renamed)
    _, only_before, only_after = _pairs(before, after, renamed)
    print(
        f"{counts['tests']} tests in both ({len(only_before)} only before, {len(only_after)} "
        f"only after): {counts['fits']} fits, {counts['engines']} engines, {counts['values']} "
        "λ values compared"
    )
    for test in only_before:
        print("ONLY BEFORE:", test)
    for line in extended:
        print("EXTENDED (the common ones compared):", line)
    for line in differ:
        print("DIFFERS:", line)
    print("bit-identical" if not differ else f"{len(differ)} difference(s)")
    return 1 if differ else 0
