"""The time-to-train driver, one idea a module: ``options`` (what a run is told), ``compile``
(ahead-of-time compilation), ``loop`` (one timed run), ``runs`` (N runs, resume, scoring).
The command line is ``mlperf_jax/train.py``."""
