"""Put a finished run where an MLPerf Inference submission tree keeps it.

``DIR`` (``--submission_dir``) is the ``<division>/<submitter>`` directory of a submission tree,
laid out as the MLPerf Inference rules say (mlcommons/policies ``submission_rules.adoc``
"Inference" tree, c195f80) and as the current submission checker reads it for v6.0 and v6.1
(mlcommons/inference@b66003e1 ``tools/submission/submission_checker/``: constants.py *_PATH,
loader.py, checks/).  :data:`ROUND` is v6.1 because the mlperf.conf this LoadGen applies (that
of mlcommons-loadgen 6.0.17) carries the seeds the checker expects for v6.1 (mlcommons/inference
b0662794 "Add random seeds for v6.1"); v6.1 differs from v6.0 only by an optional power file::

    DIR/systems/<system>.json                        system description (system_desc.py)
    DIR/src/<model>/mlperf_jax/README.md             where the implementation is (the checker needs src/)
    DIR/results/<system>/<model>/<scenario>/
        performance/run_1/mlperf_log_{summary,detail}.txt (+ mlperf_log_accuracy.json)
        accuracy/mlperf_log_{summary,detail}.txt, mlperf_log_accuracy.json, accuracy.txt
        measurements.json   implementation facts (the checker's SYSTEM_IMP_REQUIRED_FILES fields)
        user.conf           the --user_conf used, plus the command-line overrides in user.conf form
        mlperf.conf         the rules' mlperf.conf the run applied
        README.md           how to reproduce: the command line of each run

The v0.5 tree (r0.5 ``submission-checker.py``) kept mlperf.conf, user.conf, README.md and
``<system>_<implementation>_<scenario>.json`` under ``measurements/<system>/<model>/<scenario>/``,
code under ``code/``, and five Server runs; the checker read that layout up to v5.1 and v6.0
moved it into the scenario directory as above.  Model directory names: the v6.1 checker knows
``resnet`` of ours; mobilenet, ssd-mobilenet, ssd-resnet34 and gnmt left the suite, so they get
the names the v0.5 checker used (``mobilenet``, ``ssd-small``, ``ssd-large``, ``gnmt``), which the
current checker rejects: they are retired benchmarks.

Nothing here makes a run valid: the logs come from mlperf_jax's LoadGen (the rules require the
official one), accuracy logs still need ``truncate_accuracy_log.py`` (it writes the hash line the
checker wants), and fields no program can know are marked ``system_desc.UNKNOWN``.  Files a
submitter edits (systems/*.json, measurements.json) are only completed, never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from typing import Any

from mlperf_jax.loadgen import rules as _rules
from mlperf_jax.loadgen.settings import TestScenario, TestSettings

from . import system_desc

__all__ = ["ROUND", "MODEL_NAMES", "CURRENT_ROUND_MODELS", "model_name", "check_system_name",
           "user_conf_text", "measurements", "write_run"]

ROUND = "v6.1"
MODEL_NAMES = {"resnet50": "resnet", "mobilenet": "mobilenet", "ssd-mobilenet": "ssd-small",
               "ssd-resnet34": "ssd-large", "gnmt": "gnmt"}
CURRENT_ROUND_MODELS = frozenset({"resnet"})   # of MODEL_NAMES' values, those in v6.1's checker
INPUT_TYPES = {"resnet50": "uint8", "mobilenet": "uint8", "ssd-mobilenet": "uint8", "ssd-resnet34": "uint8",
               "gnmt": "int32"}
PERFORMANCE_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")
ACCURACY_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")
_RUN_LABELS = {"performance": "Performance run (performance/run_1)", "accuracy": "Accuracy run (accuracy/)",
               "submission": "Accuracy then performance run (accuracy/ and performance/run_1)"}


def model_name(benchmark: str) -> str:
    """The results/ directory name of one of our benchmarks."""
    try:
        return MODEL_NAMES[benchmark]
    except KeyError:
        raise ValueError(f"no MLPerf model name for benchmark {benchmark!r}") from None


def check_system_name(name: str) -> str:
    if not name or system_desc.sanitize(name) != name:
        raise ValueError(f"--system_name={name}: use letters, digits, '.', '_' and '-' only")
    return name


# ------------------------------------------------------------------------------------ user.conf
# TestSettings field -> (user.conf key, scenarios it applies to, factor from the field to the file)
_CONF_KEYS = {
    "min_duration_ms": ("min_duration", None, 1),
    "max_duration_ms": ("max_duration", None, 1),
    "min_query_count": ("min_query_count", None, 1),
    "max_query_count": ("max_query_count", None, 1),
    "server_target_qps": ("target_qps", "Server", 1),
    "offline_expected_qps": ("target_qps", "Offline", 1),
    "single_stream_expected_latency_ns": ("target_latency", "SingleStream", 1e-6),
    "multi_stream_expected_latency_ns": ("target_latency", "MultiStream", 1e-6),
}


def _conf_value(v: float, factor: float) -> str:
    x = v * factor
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def user_conf_text(settings: TestSettings, benchmark: str, scenario: str, user_conf: str | None) -> str:
    """The user.conf of a run: ``user_conf``'s text, then, in user.conf form, every setting the
    command line changed after it (so the official FromConfig reads back the settings used)."""
    base = TestSettings(scenario=TestScenario[scenario], mode=settings.mode)
    _rules.profile_of(settings).configure(base, benchmark, scenario, user_conf)
    lines = ["# user.conf of this run, written by python -m mlperf_jax.infer --submission_dir"]
    if user_conf:
        with open(user_conf) as f:
            lines += [f"# --user_conf={user_conf}:", f.read().rstrip("\n")]
    changed = []
    for field, (key, only, factor) in _CONF_KEYS.items():
        if only not in (None, scenario) or getattr(settings, field) == getattr(base, field):
            continue
        changed.append(f"{benchmark}.{scenario}.{key} = {_conf_value(getattr(settings, field), factor)}")
    if changed:
        lines += ["# Set on the command line for this run (flags such as --min_duration_ms and "
                  "--min_query_count break the rules: not valid for submission):"] + changed
    elif not user_conf:
        lines.append("# No user settings: the run used mlperf.conf's values and the LoadGen defaults.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ measurements.json
def measurements(benchmark: str, *, weights: str, variables: Any = None, dtype: str = "float32",
                 checkpoint_dir: str | None = None, data: str | None = None,
                 precision: str = "fp32") -> dict[str, str]:
    """The implementation facts the checker requires (SYSTEM_IMP_REQUIRED_FILES), plus notes."""
    stored = "unknown"
    if variables is not None:
        import jax
        stored = ", ".join(sorted({str(getattr(x, "dtype", type(x).__name__)) for x in jax.tree.leaves(variables)}))
    weight_types = stored if dtype in stored.split(", ") else f"{stored} (computed in {dtype})"
    if checkpoint_dir:
        start, retrain = checkpoint_dir, system_desc.UNKNOWN
    else:
        start = "none: random initialization (a test run, not MLPerf weights)"
        retrain = "no: random initialization (a test run, not MLPerf weights)"
    return {
        "starting_weights_filename": start,
        "retraining": retrain,
        "input_data_types": INPUT_TYPES.get(benchmark, system_desc.UNKNOWN),
        "weight_data_types": weight_types,
        "weight_transformations": (
            "int8 post-training quantization (qwix; per-output-channel weight scales, static "
            "per-tensor activation scales from the MLPerf calibration list; README: INT8 "
            "quantization)" if precision == "int8" else
            "none" if dtype in stored.split(", ") else f"cast to {dtype} for compute"),
        "notes": f"mlperf_jax run; weights: {weights}; data: {data or 'unknown'}; logs from mlperf_jax's "
                 "pure-Python LoadGen (not the official LoadGen)",
    }


# ---------------------------------------------------------------------------------------- writing
def _complete_json(path: str, fresh: dict) -> None:
    """Write ``fresh`` to ``path``, keeping every value already there (a submitter's edits)."""
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    merged = {**fresh, **old}
    if merged != old:
        with open(path, "w") as f:
            json.dump(merged, f, indent=2)
            f.write("\n")


def _commands_from_readme(path: str) -> dict[str, str]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        text = f.read()
    found = {}
    for mode, label in _RUN_LABELS.items():
        m = re.search(re.escape(label) + r":\n\n    (.+)\n", text)
        if m:
            found[mode] = m.group(1)
    return found


def _git_revision() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"git {rev}" + (" with uncommitted changes" if dirty else "") if rev else ""


def _readme(model: str, scenario: str, system: str, commands: dict[str, str], notes: list[str]) -> str:
    out = [f"# {model} {scenario} on {system} (mlperf_jax)", "",
           f"Written by `python -m mlperf_jax.infer --submission_dir` in the MLPerf Inference {ROUND} layout.", "",
           "**Not an MLPerf result:** the logs come from mlperf_jax's pure-Python LoadGen; the rules "
           "require the official LoadGen.", ""]
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    out += ["## How to reproduce", ""]
    for mode, label in _RUN_LABELS.items():
        if mode in commands:
            out += [f"{label}:", "", f"    {commands[mode]}", ""]
    out += ["## Before submitting", "",
            "1. Run mlcommons/inference `tools/submission/truncate_accuracy_log.py`: it truncates "
            "`accuracy/mlperf_log_accuracy.json` and writes its hash into `accuracy.txt`.",
            f"2. Replace every `{system_desc.UNKNOWN}` in `systems/{system}.json` and `measurements.json`.",
            "3. Put the code under `src/` and run the checker: "
            f"`python3 -m tools.submission.submission_checker.main --input ROOT --version {ROUND}`.", ""]
    return "\n".join(out)


def write_run(submission_dir: str, *, outdir: str, benchmark: str, scenario: str, mode: str,
              settings: TestSettings, accuracy_text: str | None, command: list[str],
              user_conf: str | None = None, system_name: str | None = None, weights: str = "random init",
              variables: Any = None, dtype: str = "float32", checkpoint_dir: str | None = None,
              data: str | None = None, precision: str = "fp32") -> str:
    """Copy the logs of the finished run in ``outdir`` into ``submission_dir`` and write the
    files around them; returns the scenario directory.  ``mode`` is the CLI's (performance,
    accuracy, submission); ``command`` the argv of the run (for README.md)."""
    if mode not in _RUN_LABELS:
        raise ValueError(f"--submission_dir: not with --mode={mode} (use performance or accuracy runs)")
    model = model_name(benchmark)
    system = check_system_name(system_name) if system_name else system_desc.default_system_name()
    root = os.path.abspath(submission_dir)
    submitter = os.path.basename(root)
    parent = os.path.basename(os.path.dirname(root))
    division = parent if parent in ("closed", "open", "network") else system_desc.UNKNOWN
    scen = os.path.join(root, "results", system, model, scenario)

    def copy(names, dest):
        os.makedirs(dest, exist_ok=True)
        for n in names:
            if os.path.exists(os.path.join(outdir, n)):
                shutil.copyfile(os.path.join(outdir, n), os.path.join(dest, n))

    if mode in ("performance", "submission"):
        # A SubmissionRun's accuracy log belongs to its accuracy run: only accuracy/ gets it.
        copy(PERFORMANCE_FILES if mode == "performance" else PERFORMANCE_FILES[:2],
             os.path.join(scen, "performance", "run_1"))
    if mode in ("accuracy", "submission"):
        copy(ACCURACY_FILES, os.path.join(scen, "accuracy"))
        with open(os.path.join(scen, "accuracy", "accuracy.txt"), "w") as f:
            f.write((accuracy_text.rstrip("\n") if accuracy_text else
                     "no accuracy metric: this run could not compute one (see the CLI's output)") + "\n")
    # The performance run's settings are the ones a submission states; an accuracy run fills
    # in user.conf / mlperf.conf only when no performance run has.
    if mode != "accuracy" or not os.path.exists(os.path.join(scen, "user.conf")):
        with open(os.path.join(scen, "user.conf"), "w") as f:
            f.write(user_conf_text(settings, benchmark, scenario, user_conf))
        shutil.copyfile(_rules.profile_of(settings).conf_path(), os.path.join(scen, "mlperf.conf"))
    _complete_json(os.path.join(scen, "measurements.json"),
                   measurements(benchmark, weights=weights, variables=variables, dtype=dtype,
                                checkpoint_dir=checkpoint_dir, data=data, precision=precision))
    commands = _commands_from_readme(os.path.join(scen, "README.md"))
    commands[mode] = "python -m mlperf_jax.infer " + shlex.join(command[1:])
    notes = []
    if model not in CURRENT_ROUND_MODELS:
        notes.append(f"`{model}` is not a benchmark of MLPerf Inference {ROUND} (the name is the v0.5 "
                     "checker's); the current checker rejects it.")
    if _rules.profile_of(settings) is not _rules.current:
        notes.append(f"Run under the {_rules.profile_of(settings).name} rules (their mlperf.conf and seeds): "
                     f"the {ROUND} checker's seed check fails.")
    with open(os.path.join(scen, "user.conf")) as f:
        overridden = "Set on the command line" in f.read()
    if overridden:
        notes.append("The performance run changed rule settings on the command line (see user.conf): "
                     "not valid for submission.")
    with open(os.path.join(scen, "README.md"), "w") as f:
        f.write(_readme(model, scenario, system, commands, notes))
    os.makedirs(os.path.join(root, "systems"), exist_ok=True)
    _complete_json(os.path.join(root, "systems", f"{system}.json"), system_desc.detect(system, submitter, division))
    src = os.path.join(root, "src", model, "mlperf_jax")
    os.makedirs(src, exist_ok=True)
    if not os.path.exists(os.path.join(src, "README.md")):
        rev = _git_revision()
        with open(os.path.join(src, "README.md"), "w") as f:
            f.write(f"# mlperf_jax\n\nThe runs under results/*/{model}/ used mlperf_jax"
                    + (f" ({rev})" if rev else "") + ": `mlperf_jax/infer.py` and `mlperf_jax/inference/` "
                    "interface with the LoadGen.  Put that code here before submitting.\n")
    return scen
