"""What every benchmark mode shares: its JSON results file with the plots beside it, and
its standalone `python -m banyan.benchmarks.<mode>` entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

Plots = Callable[[Path], list[Path]]


def save(out: str | None, result: dict, plots: Plots | None = None) -> None:
    """Write `result` to `out` as JSON (nothing without `out`), then `plots(out)`, naming each file."""
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    for written in plots(path) if plots else []:
        print(f"wrote {written}")


def standalone(doc: str, add_args: Callable[[argparse.ArgumentParser], None],
               run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse `argv` with the mode's arguments and run it (its docstring's first line as description)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_args(parser)
    return run(parser.parse_args(argv))
