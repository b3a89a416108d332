"""Results people can read: the MLPerf training submission tree, convergence and variance checks,
a custom summary score, plots and a self-contained HTML report.

    python -m mlperf_jax.report package --runs=runs/ --out=submission/
    python -m mlperf_jax.report summary --results=... --reference=... [--weights=...]
    python -m mlperf_jax.report html --runs=runs/ [--out=report.html]
"""
