"""The resumable benchmarks' rows: METHOD:CONCEPT, measured once and kept in the JSON under
results[METHOD]["per_concept"][CONCEPT], so that a re-run measures only what is missing (or what --redo names)."""

from __future__ import annotations

import argparse
from pathlib import Path


def row_parser(description: str, splits) -> argparse.ArgumentParser:
    """The command line every resumable benchmark shares: --split, --rows, --redo, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--split", choices=sorted(splits), default="heldout")
    parser.add_argument("--rows", default="", help="METHOD:CONCEPT rows (default: every row of the split)")
    parser.add_argument("--redo", default="", help="rows to measure again although the file has them")
    parser.add_argument("--json", type=Path, default=None, help="default: the split's file in docs/results")
    return parser


def listed(text: str) -> list[str]:
    """A comma-separated command-line list, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def rows_to_measure(parser: argparse.ArgumentParser, rows: str, redo: str, every: list[str], results: dict,
                    on_request: tuple[str, ...] = ()) -> list[str]:
    """The rows of ``rows`` (default: ``every``) that ``results`` lacks, and those ``redo`` names; a row outside
    ``every`` and ``on_request`` (rows run only when named) is a command-line error naming the valid ones."""
    again = set(listed(redo))
    wanted = known_rows(parser, rows, every, on_request, extra=tuple(sorted(again)))
    todo = [row for row in wanted if row in again
            or row.split(":", 1)[1] not in results.get(row.split(":", 1)[0], {}).get("per_concept", {})]
    print(f"rows to measure: {', '.join(todo) or 'none'}", flush=True)
    return todo


def known_rows(parser: argparse.ArgumentParser, rows: str, every: list[str], on_request: tuple[str, ...] = (),
               extra: tuple[str, ...] = ()) -> list[str]:
    """The rows of ``rows`` (default: ``every``); one outside ``every`` and ``on_request`` (or among ``extra``) is a
    command-line error naming the valid ones."""
    wanted = listed(rows) or every
    valid = every + list(on_request)
    unknown = [row for row in wanted + list(extra) if row not in valid]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(valid)}")
    return wanted
