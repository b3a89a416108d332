"""Inference end to end against the compiled model alone (and torchvision), side by side.

    python scripts/bench_infer.py --benchmark resnet50 --batch_size 32 --image_size 224
    python scripts/bench_infer.py --benchmark mobilenet --batch_size 32 --image_size 64 --scenario Server
    python scripts/bench_infer.py --batch_size 32 --image_size 64 --scenario SingleStream --repeats 3

Why: the SUT (inference/batching.py) should cost the device nothing beyond the model; any gap
between "model only" and "end to end" is host-side overhead (QSL lookups, stacking, padding,
transfers, answering LoadGen, the LoadGen's own threads) stealing time from the device.

* model only: the very compiled function ClassifierSUT runs (``sut._compiled[b]``) on a
  device-resident uint8 batch, dispatched back to back, images/s;
* end to end: our LoadGen (performance mode) through ClassifierSUT on a synthetic QSL, batch
  sizes compiled as the CLI does (1, 2, 4, ... up to --batch_size).  Offline: samples/s from the
  LoadGen's result, for one query of a whole number of full batches lasting about --seconds.  Server: at --server_fraction of the model rate; the
  completed samples/s and the 99th percentile latency.  SingleStream: the 90th percentile
  latency against the 90th percentile of the batch-1 model's own latencies, one call at a time;
* torch (--torch auto: when torch is importable): torchvision's resnet50 in eval mode under
  ``torch.inference_mode`` at the same batch and image size (torchvision has no MobileNetV1; the
  peer is resnet50 whichever --benchmark runs, and its ratio is only printed for resnet50).

Model-only and end-to-end runs alternate (--repeats) in one process, so machine load hits both.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
from mlperf_jax.cli import ArgumentParser  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(argv):
    p = ArgumentParser(prog="bench_infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="resnet50", choices=("resnet50", "mobilenet"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--scenario", default="Offline", choices=("Offline", "Server", "SingleStream"))
    p.add_argument("--seconds", type=float, default=10.0, help="length of each timed measurement")
    p.add_argument("--repeats", type=int, default=1, help="alternating model-only / end-to-end pairs")
    p.add_argument("--server_fraction", type=float, default=0.7, help="Server QPS as a fraction of the model rate")
    p.add_argument("--torch", default="auto", choices=("auto", "on", "off"))
    a = p.parse_args(argv)
    if a.batch_size < 1 or a.image_size < 32 or a.seconds <= 0 or a.repeats < 1:
        p.error("--batch_size >= 1, --image_size >= 32, --seconds > 0, --repeats >= 1")
    return a


def model_only(sut, b: int, seconds: float) -> float:
    """Images/s of the compiled function alone, batches already on the device, back to back."""
    import jax
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (b, sut.image_size, sut.image_size, 3),
                                                          dtype=np.uint8), sut._batch_sharding)
    f, v = sut._compiled[b], sut.variables
    jax.block_until_ready(f(v, x))
    n, t0 = 0, time.perf_counter()
    while True:
        out = f(v, x)
        n += 1
        if n % 2 == 0:  # keep at most two in flight, as the SUT's pipeline does
            jax.block_until_ready(out)
            if time.perf_counter() - t0 >= seconds:
                break
    jax.block_until_ready(out)
    return n * b / (time.perf_counter() - t0)


def model_latencies(sut, seconds: float) -> np.ndarray:
    """Seconds per call of the batch-1 compiled function, one call at a time, each waited for:
    what SingleStream does, minus the SUT and the LoadGen (one image already on the device)."""
    import jax
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (1, sut.image_size, sut.image_size, 3),
                                                          dtype=np.uint8), sut._batch_sharding)
    f, v = sut._compiled[1], sut.variables
    jax.block_until_ready(f(v, x))
    out, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(out) < 5:
        t = time.perf_counter()
        jax.block_until_ready(f(v, x))
        out.append(time.perf_counter() - t)
    return np.asarray(out)


def end_to_end(sut, qsl, scenario: str, rate: float, seconds: float, server_fraction: float, batch: int):
    """(samples/s or latency s, summary) of one LoadGen performance run through ``sut``."""
    from mlperf_jax import loadgen as lg
    s = lg.TestSettings(scenario=lg.TestScenario[scenario], mode=lg.TestMode.PerformanceOnly)
    s.min_duration_ms = int(seconds * 1000)
    s.min_query_count = 1
    s.offline_expected_qps = rate
    if scenario == "Offline":
        # a whole number of full batches, about ``seconds`` long: a padded last batch would cost a
        # full batch's time and measure the query's size, not the SUT (the query is
        # max(min_query_count, 1.1 x min_duration x expected QPS) samples)
        s.min_duration_ms = 1
        s.min_query_count = max(1, round(rate * seconds / batch)) * batch
    s.server_target_qps = rate * server_fraction
    s.server_target_latency_ns = 10 ** 10
    s.single_stream_expected_latency_ns = int(1e9 / max(rate, 1e-3))
    with tempfile.TemporaryDirectory() as d:
        r = lg.start_test(sut, qsl, s, outdir=d)
    if sut.error is not None:
        raise RuntimeError(f"SUT failed: {sut.error!r}")
    return r.summary


def torch_peer(b: int, size: int, seconds: float) -> float | None:
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    m = torchvision.models.resnet50().eval()
    x = torch.randn(b, 3, size, size)
    with torch.inference_mode():
        m(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m(x)
            n += 1
    return n * b / (time.perf_counter() - t0)


def _pct(lat_ns: np.ndarray, p: float) -> float:
    return float(np.percentile(lat_ns, p)) / 1e9 if lat_ns.size else float("nan")


def main(argv=None) -> int:
    a = _args(argv)
    from mlperf_jax.inference import ClassifierSUT, SyntheticImageQSL, builders
    b = a.batch_size
    model = builders.build_model(a.benchmark, "float32", 1.0)
    variables, _ = builders.load_variables(model, None, a.image_size, say=lambda m: None)
    sizes = sorted({1, 2, 4, 8, 16, 32, b} & set(range(1, b + 1)))  # as the CLI compiles them
    n_qsl = max(4 * b, 256)
    qsl = SyntheticImageQSL(image_size=a.image_size, total=n_qsl, performance_sample_count=n_qsl)
    timeout = 2.0 if a.scenario == "Server" else 0.0
    sut = ClassifierSUT(model.apply, variables, qsl, preprocessing=a.benchmark, image_size=a.image_size,
                        batch_sizes=sizes, batch_timeout_ms=timeout)
    print(f"bench_infer: {a.benchmark} {a.image_size}x{a.image_size} batch {b} {a.scenario}; compiled "
          f"{sut.batch_sizes} in {sut.compile_seconds:.1f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    try:
        for rep in range(a.repeats):
            m = model_only(sut, b, a.seconds)
            summ = end_to_end(sut, qsl, a.scenario, m, a.seconds, a.server_fraction, b)
            lat = summ.pr.sample_latencies
            if a.scenario == "Offline":
                e2e = summ.samples_per_second
                print(f"  [{rep}] model only {m:8.2f} images/s | Offline end to end {e2e:8.2f} samples/s "
                      f"| ratio {e2e / m:.3f}", flush=True)
                rows.append((m, e2e))
            elif a.scenario == "Server":
                e2e = summ.completed_samples_per_sec
                want = m * a.server_fraction
                print(f"  [{rep}] model only {m:8.2f} images/s | Server at {want:.2f} QPS: completed "
                      f"{e2e:.2f}/s ({e2e / want:.3f} of target), p99 latency {_pct(lat, 99) * 1e3:.1f} ms, "
                      f"batch {b} model latency {1e3 * b / m:.1f} ms", flush=True)
                rows.append((want, e2e))
            else:
                # percentile against percentile: the model's own latencies, one call at a time
                m90 = float(np.percentile(model_latencies(sut, a.seconds / 2), 90))
                p90 = _pct(lat, 90)
                print(f"  [{rep}] model batch 1 p90 {m90 * 1e3:8.2f} ms | SingleStream p90 {p90 * 1e3:8.2f} ms "
                      f"| ratio {m90 / p90:.3f}", flush=True)
                rows.append((m90, p90))
    finally:
        sut.close()
    tp = None
    if a.torch != "off":
        tp = torch_peer(b, a.image_size, a.seconds)
        if tp is None and a.torch == "on":
            print("bench_infer: error: --torch=on but torch/torchvision are not importable", file=sys.stderr)
            return 2
    med = np.median(np.asarray(rows), axis=0)
    print(f"\n{'':34s}{'value':>12s}{'ratio':>8s}")
    if a.scenario == "Offline":
        print(f"{'model only (images/s)':34s}{med[0]:12.2f}{1.0:8.3f}")
        print(f"{'Offline end to end (samples/s)':34s}{med[1]:12.2f}{med[1] / med[0]:8.3f}")
    elif a.scenario == "Server":
        print(f"{'Server target (QPS)':34s}{med[0]:12.2f}{1.0:8.3f}")
        print(f"{'Server completed (samples/s)':34s}{med[1]:12.2f}{med[1] / med[0]:8.3f}")
    else:
        print(f"{'model batch 1 p90 latency (ms)':34s}{med[0] * 1e3:12.2f}{1.0:8.3f}")
        print(f"{'SingleStream p90 latency (ms)':34s}{med[1] * 1e3:12.2f}{med[0] / med[1]:8.3f}")
    if tp is not None:
        ratio = f"{tp / med[0]:8.3f}" if a.scenario == "Offline" and a.benchmark == "resnet50" else f"{'':8s}"
        print(f"{'torchvision resnet50 eval (img/s)':34s}{tp:12.2f}{ratio}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
