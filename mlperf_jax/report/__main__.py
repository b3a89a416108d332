"""``python -m mlperf_jax.report COMMAND ...``: one sub-command per module, each with its own flags
(``main(argv) -> exit status``). A user error is one line on stderr and exit status 2."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "package": ("mlperf_jax.report.package", "the MLPerf training submission tree of finished runs"),
    "summary": ("mlperf_jax.report.summary", "speedups against reference times and their weighted "
                "geometric mean (a custom summary, not an MLPerf score)"),
    "html": ("mlperf_jax.report.html", "one self-contained HTML page: tables and plots of runs"),
}


def _usage() -> str:
    lines = ["usage: python -m mlperf_jax.report COMMAND [flags]", "commands:"]
    lines += [f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"report: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
