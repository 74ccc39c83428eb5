"""What every stage script shares: argument parsing with --params, clean errors, timing."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from digits.errors import UserError


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def run(main: Callable[[], None]) -> None:
    """Run a stage's main; a UserError becomes one 'error:' line on stderr and exit status 2."""
    start = time.perf_counter()
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
