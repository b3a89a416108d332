"""Benchmark configs as ``ml_collections`` config files (flax examples / big_vision style).

Each module here defines ``get_config(variant)`` and ``VARIANTS``; ``--config=tiny`` on the command
line resolves to ``configs/<benchmark>.py:tiny``. Configs are data: nothing here imports JAX, a model
or a pipeline.
"""
