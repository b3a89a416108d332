"""argparse for the scripts: a user's mistake is one line on stderr (``prog: error: message``) and
exit code 2, as for every command line of the project, not argparse's usage block."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``--help`` still prints usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
