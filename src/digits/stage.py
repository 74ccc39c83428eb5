"""What every stage script shares: argument parsing with --params, clean errors, timing."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable

from digits.errors import Interrupted, UserError


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process the default way
    raise Interrupted(signum)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main; a UserError becomes one 'error:' line on stderr and exit status 2.

    SIGTERM and SIGINT raise ``Interrupted`` inside main, so open MLflow runs end as KILLED (tracking.start_run)
    and atomic writes clean up; the exit status is then 128 + the signal number, as for a default kill.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    start = time.perf_counter()
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        print(f"interrupted by {signal.Signals(exc.signum).name}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
