"""Shared test set-up: quiet TensorFlow, and helpers for subprocess runs on fake devices."""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(args, *, devices: int | None = None, env: dict | None = None, timeout: int = 600,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in a fresh interpreter, optionally with N fake CPU devices."""
    e = dict(os.environ)
    e["TF_CPP_MIN_LOG_LEVEL"] = "3"
    e["JAX_PLATFORMS"] = "cpu"
    if devices:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if env:
        e.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=cwd or REPO)
