"""JAX's persistent compilation cache for the command lines, and a count of its hits.

A result is N runs of one program set, and ``make test`` compiles the same tiny programs again and
again: with compiled executables kept on disk, only the first run of a config pays for XLA (the
rest load the executable, which gives the same results: same program, same compiler, same
machine; the cache key covers the program, jaxlib, XLA flags, compile options and devices).

``enable(resolve_dir(flag))`` is what ``python -m mlperf_jax.train`` and ``python -m
mlperf_jax.infer`` call before compiling anything. The folder is, in order: the
``--compilation_cache_dir`` flag (an empty string switches the cache off), JAX's own
``JAX_COMPILATION_CACHE_DIR``, then ``$XDG_CACHE_HOME/mlperf_jax/jax_cache`` (``~/.cache/...``).
Its size is bounded (``DEFAULT_MAX_BYTES``; least recently used entries go first). JAX's own
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` and ``JAX_COMPILATION_CACHE_MAX_SIZE`` win over our
defaults.

``count_compiles()`` counts, in the calling thread, the compiles that asked the cache and those it
served (JAX's monitoring events ``/jax/compilation_cache/compile_requests_use_cache`` and
``.../cache_hits``): the driver reports them in the result table's compile column.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from typing import Iterator

import jax

#: the cache's bound on disk (jax_compilation_cache_max_size): 2 GiB holds the programs of every
#: benchmark's tiny track many times over and a handful of reference-size ones
DEFAULT_MAX_BYTES = 2 << 30
#: programs that compile faster than this are not written. The tiny tracks' programs take
#: 0.1-1 s on 2 CPU cores, under JAX's default of 1 s; eager single-op programs (10-50 ms) stay out
#: so that the cache holds what is worth loading.
DEFAULT_MIN_COMPILE_TIME_S = 0.1

_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_HITS = "/jax/compilation_cache/cache_hits"


def default_dir() -> str:
    """``$XDG_CACHE_HOME/mlperf_jax/jax_cache``, else ``~/.cache/mlperf_jax/jax_cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlperf_jax", "jax_cache")


def resolve_dir(flag: str | None) -> str | None:
    """The cache folder a command line uses: the flag's value (``""``: none), else
    ``JAX_COMPILATION_CACHE_DIR`` (empty: none), else ``default_dir()``."""
    if flag is not None:
        return flag or None
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env is not None:
        return env or None
    return default_dir()


def enable(path: str | None, *, max_bytes: int | None = None,
           min_compile_time_s: float | None = None) -> str | None:
    """Point JAX's persistent compilation cache at ``path`` (``None``: switch it off) for this
    process; returns the folder in use. Raises ``OSError`` when the folder cannot be made.
    ``max_bytes`` and ``min_compile_time_s`` left at None: JAX's environment variable if set,
    else ``DEFAULT_MAX_BYTES`` and ``DEFAULT_MIN_COMPILE_TIME_S``."""
    from jax.experimental.compilation_cache import compilation_cache as cc
    if not path:
        jax.config.update("jax_enable_compilation_cache", False)
        jax.config.update("jax_compilation_cache_dir", None)
        _reset(cc)
        return None
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    env = os.environ
    if max_bytes is None and "JAX_COMPILATION_CACHE_MAX_SIZE" not in env:
        max_bytes = DEFAULT_MAX_BYTES
    if max_bytes is not None:
        try:
            import filelock  # noqa: F401  (JAX's LRU eviction needs it)
            jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
        except ImportError:
            prune(path, max_bytes)  # no eviction while running: bound it at start-up instead
    if min_compile_time_s is None and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in env:
        min_compile_time_s = DEFAULT_MIN_COMPILE_TIME_S
    if min_compile_time_s is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    _reset(cc)
    return path


def enable_from_flag(flag: str | None, *, resolve: bool = True) -> str | None:
    """``enable`` for a command line's ``--compilation_cache_dir`` (resolved by ``resolve_dir``
    unless ``resolve`` is False, where None and '' mean no cache); a folder that cannot be made
    raises ``ValueError`` with the one-line message the command prints."""
    path = resolve_dir(flag) if resolve else (flag or None)
    try:
        return enable(path)
    except OSError as e:
        raise ValueError(f"--compilation_cache_dir {path}: {e.strerror or e}") from None


def _reset(cc) -> None:
    """JAX decides once per process whether a cache is in use: make it decide again (without its
    INFO line, which absl's handler would print)."""
    logger = logging.getLogger("jax._src.compilation_cache")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        cc.reset_cache()
    finally:
        logger.setLevel(level)


def prune(path: str, max_bytes: int) -> int:
    """Delete the least recently used entries (JAX's ``-cache`` files and their ``-atime``
    stamps) until the folder holds at most ``max_bytes``; returns the bytes freed."""
    entries = []
    for e in os.scandir(path):
        if e.is_file() and e.name.endswith("-cache"):
            stamp = os.path.join(path, e.name[:-len("-cache")] + "-atime")
            used = os.path.getmtime(stamp) if os.path.exists(stamp) else e.stat().st_mtime
            entries.append((used, e.stat().st_size, e.path, stamp))
    total, freed = sum(s for _, s, _, _ in entries), 0
    for _, size, p, stamp in sorted(entries):
        if total - freed <= max_bytes:
            break
        for f in (p, stamp):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f)
        freed += size
    return freed


@dataclasses.dataclass
class CompileCount:
    """Compiles that asked the persistent cache, and those it served (``in_use()`` says whether
    there was a cache to ask)."""

    requests: int = 0
    hits: int = 0


_local = threading.local()
_listening = False
_listen_lock = threading.Lock()


def _on_event(event: str, **_kw) -> None:
    for count in getattr(_local, "active", ()):
        if event == _REQUESTS:
            count.requests += 1
        elif event == _HITS:
            count.hits += 1


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """Count this thread's compiles (and persistent-cache hits) while the block runs."""
    global _listening
    with _listen_lock:
        if not _listening:
            jax.monitoring.register_event_listener(_on_event)
            _listening = True
    count = CompileCount()
    active = getattr(_local, "active", None)
    if active is None:
        active = _local.active = []
    active.append(count)
    try:
        yield count
    finally:
        active.remove(count)


def in_use() -> str | None:
    """The folder JAX's persistent cache writes to in this process, or None."""
    return jax.config.jax_compilation_cache_dir or None
