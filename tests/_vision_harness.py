"""A miniature of the MLPerf reference vision harness, for tests/test_loadgen_fidelity.py.

Written from reading mlcommons/inference vision/classification_and_detection/python/main.py
(not copied): the same LoadGen calls in the same order with the same argument conventions
(user.conf through ``TestSettings.FromConfig(path, model, scenario)``, ``--time`` setting both
min and max duration, ``--count`` setting min and max query count, ``LogOutputSettings`` with
an absolute outdir after ``os.chdir`` into it, ``enable_trace = --debug``,
``StartTestWithLogSettings(sut, qsl, settings, log_settings, audit_config)``), the same
threading (a ``Queue(maxsize=threads * 4)`` feeding worker threads that answer with
``array.array`` buffers from a ``finally:`` block) and a null backend that sleeps
``--delay`` seconds per batch.  ``--lg official`` imports mlperf_loadgen, ``--lg ours`` the
compat module: the only difference.  The last stdout line is a JSON report.
"""

import argparse
import array
import json
import os
import sys
import threading
import time
from queue import Queue

import numpy as np

worker_deaths: list[str] = []
threading.excepthook = lambda a: worker_deaths.append(f"{a.exc_type.__name__}: {a.exc_value}")


class FakeDataset:
    """Images are their own index; the label of item i is i % 1000."""

    def __init__(self, count: int):
        self.count = count
        self.loaded: set[int] = set()
        self.last_loaded = time.time()

    def get_item_count(self) -> int:
        return self.count

    def load_query_samples(self, idx) -> None:
        self.loaded.update(idx)
        self.last_loaded = time.time()

    def unload_query_samples(self, idx) -> None:
        if idx is None:
            self.loaded.clear()
        else:
            self.loaded.difference_update(idx)

    def get_samples(self, idx):
        missing = [i for i in idx if i not in self.loaded]
        if missing:
            raise KeyError(f"samples {missing[:3]} were not loaded")
        return np.asarray(idx, dtype=np.int64), [i % 1000 for i in idx]


class NullBackend:
    inputs = ["image"]

    def __init__(self, delay: float):
        self.delay = delay

    def predict(self, feed):
        if self.delay:
            time.sleep(self.delay)
        return [np.asarray(feed["image"]) % 1000]


class Item:
    def __init__(self, query_id, content_id, img, label=None):
        self.query_id, self.content_id, self.img, self.label = query_id, content_id, img, label
        self.start = time.time()


class RunnerBase:
    def __init__(self, lg, model, ds, threads, max_batchsize):
        self.lg, self.model, self.ds, self.threads, self.max_batchsize = lg, model, ds, threads, max_batchsize
        self.result_timing: list[float] = []
        self.result_dict: dict = {}
        self.take_accuracy = False

    def start_run(self, result_dict, take_accuracy):
        self.result_dict, self.take_accuracy, self.result_timing = result_dict, take_accuracy, []

    def run_one_item(self, qitem):
        processed = []
        try:
            out = self.model.predict({self.model.inputs[0]: qitem.img})[0]
            processed = [[float(v)] for v in out]
            for v, label in zip(out, qitem.label):
                self.result_dict["good"] += int(v == label)
                self.result_dict["total"] += 1
            self.result_timing.append(time.time() - qitem.start)
        except Exception:  # noqa: BLE001 - the reference harness logs and answers empty
            processed = [[]] * len(qitem.query_id)
        finally:
            keep, response = [], []
            for i, qid in enumerate(qitem.query_id):
                buf = array.array("B", np.array(processed[i], np.float32).tobytes())
                keep.append(buf)
                addr, size = buf.buffer_info()
                response.append(self.lg.QuerySampleResponse(qid, addr, size))
            self.lg.QuerySamplesComplete(response)

    def enqueue(self, query_samples):
        idx = [q.index for q in query_samples]
        ids = [q.id for q in query_samples]
        for i in range(0, len(idx), self.max_batchsize):
            data, label = self.ds.get_samples(idx[i:i + self.max_batchsize])
            self.run_one_item(Item(ids[i:i + self.max_batchsize], idx[i:i + self.max_batchsize], data, label))

    def finish(self):
        pass


class QueueRunner(RunnerBase):
    def __init__(self, *a):
        super().__init__(*a)
        self.tasks: Queue = Queue(maxsize=self.threads * 4)
        self.workers = [threading.Thread(target=self.handle_tasks, args=(self.tasks,), daemon=True)
                        for _ in range(self.threads)]
        for w in self.workers:
            w.start()

    def handle_tasks(self, tasks_queue):
        while True:
            qitem = tasks_queue.get()
            if qitem is None:
                tasks_queue.task_done()
                break
            self.run_one_item(qitem)
            tasks_queue.task_done()

    def enqueue(self, query_samples):
        idx = [q.index for q in query_samples]
        ids = [q.id for q in query_samples]
        for i in range(0, len(idx), self.max_batchsize):
            data, label = self.ds.get_samples(idx[i:i + self.max_batchsize])
            self.tasks.put(Item(ids[i:i + self.max_batchsize], idx[i:i + self.max_batchsize], data, label))

    def finish(self):
        for _ in self.workers:
            self.tasks.put(None)
        for w in self.workers:
            w.join()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lg", choices=["official", "ours"], required=True)
    p.add_argument("--scenario", default="SingleStream")
    p.add_argument("--model-name", default="resnet50")
    p.add_argument("--user_conf", default="user.conf")
    p.add_argument("--audit_conf", default="audit.config")
    p.add_argument("--output", default="output")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batchsize", type=int, default=32)
    p.add_argument("--qps", type=int)
    p.add_argument("--time", type=int)
    p.add_argument("--count", type=int)
    p.add_argument("--total", type=int, default=1000)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args()
    if args.lg == "official":
        import mlperf_loadgen as lg
    else:
        from mlperf_jax.loadgen import compat as lg
    scenario_map = {"SingleStream": lg.TestScenario.SingleStream, "MultiStream": lg.TestScenario.MultiStream,
                    "Server": lg.TestScenario.Server, "Offline": lg.TestScenario.Offline}

    ds = FakeDataset(args.count or args.total)
    backend = NullBackend(args.delay)
    user_conf = os.path.abspath(args.user_conf)
    if not os.path.exists(user_conf):
        sys.exit(f"{user_conf} not found")
    audit_config = os.path.abspath(args.audit_conf)
    output_dir = os.path.abspath(args.output)
    os.makedirs(output_dir, exist_ok=True)
    os.chdir(output_dir)
    count = ds.get_item_count()

    ds.load_query_samples([0])  # warm-up, as the harness does
    for _ in range(5):
        img, _ = ds.get_samples([0])
        backend.predict({backend.inputs[0]: img})
    ds.unload_query_samples(None)

    scenario = scenario_map[args.scenario]
    runner_map = {lg.TestScenario.SingleStream: RunnerBase, lg.TestScenario.MultiStream: QueueRunner,
                  lg.TestScenario.Server: QueueRunner, lg.TestScenario.Offline: QueueRunner}
    runner = runner_map[scenario](lg, backend, ds, args.threads, args.max_batchsize)

    def issue_queries(query_samples):
        runner.enqueue(query_samples)

    def flush_queries():
        pass

    log_output_settings = lg.LogOutputSettings()
    log_output_settings.outdir = output_dir
    log_output_settings.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.enable_trace = args.debug
    log_settings.log_output = log_output_settings

    settings = lg.TestSettings()
    settings.FromConfig(user_conf, args.model_name, args.scenario)
    settings.scenario = scenario
    settings.mode = lg.TestMode.AccuracyOnly if args.accuracy else lg.TestMode.PerformanceOnly
    if args.time:
        settings.min_duration_ms = args.time * 1000
        settings.max_duration_ms = args.time * 1000
    if args.qps:
        settings.server_target_qps = float(args.qps)
        settings.offline_expected_qps = float(args.qps)
    if args.count:
        settings.min_query_count = args.count
        settings.max_query_count = args.count

    sut = lg.ConstructSUT(issue_queries, flush_queries)
    qsl = lg.ConstructQSL(count, min(count, 500), ds.load_query_samples, ds.unload_query_samples)
    result_dict = {"good": 0, "total": 0, "scenario": str(scenario)}
    runner.start_run(result_dict, args.accuracy)
    t0 = time.time()
    lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, audit_config)
    took = time.time() - t0
    timing = list(runner.result_timing)
    runner.finish()
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)
    final = {"{}".format(scenario): {"count": len(timing), "good": result_dict["good"],
                                     "total": result_dict["total"], "took": took}}
    with open("results.json", "w") as f:
        json.dump(final, f, sort_keys=True, indent=4)
    print(json.dumps({"scenario": result_dict["scenario"], "results": final, "answered": result_dict["total"],
                      "worker_deaths": worker_deaths, "files": sorted(os.listdir(output_dir))}))


if __name__ == "__main__":
    main()
