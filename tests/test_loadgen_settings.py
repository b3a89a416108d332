"""TestSettings defaults and mlperf.conf/user.conf parsing, checked against mlperf_loadgen."""

import mlperf_loadgen as lg  # the official LoadGen: a test dependency (the `test` extra)
import pytest

from mlperf_jax.loadgen import ConfigError, TestMode, TestScenario, TestSettings

FIELDS = [f for f in vars(TestSettings()) if hasattr(lg.TestSettings(), f)]


def _official(scenario, model, user_conf=None):
    # The official FromConfig loads mlperf.conf only on the first call in a process, so run it
    # in a fresh interpreter.
    import json
    import subprocess
    import sys
    code = (
        "import json, mlperf_loadgen as lg\n"
        "s = lg.TestSettings()\n"
        f"s.FromConfig({user_conf!r} or '/dev/null', {model!r}, {scenario!r}, 1)\n"
        f"print(json.dumps({{f: (int(getattr(s, f)) if type(getattr(s, f)).__name__ in ('TestMode','TestScenario') "
        f"else getattr(s, f)) for f in {FIELDS!r}}}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ours(scenario, model, user_conf=None):
    s = TestSettings().from_config(user_conf, model, scenario)
    return {f: (int(getattr(s, f)) if isinstance(getattr(s, f), (TestMode, TestScenario)) else getattr(s, f))
            for f in FIELDS}


def test_defaults_match_official():
    ours, off = TestSettings(), lg.TestSettings()
    assert len(FIELDS) > 35
    for f in FIELDS:
        a, b = getattr(ours, f), getattr(off, f)
        if f in ("scenario", "mode"):
            a, b = int(a), int(b)
        assert a == pytest.approx(b), f


@pytest.mark.parametrize("model,scenario", [("resnet50", "Server"), ("resnet50", "Offline"),
                                            ("mobilenet", "SingleStream"), ("retinanet", "MultiStream")])
def test_mlperf_conf_matches_official(model, scenario):
    ours, off = _ours(scenario, model), _official(scenario, model)
    if model == "mobilenet":  # our addition (v0.5 model); the official conf has no entry
        ours.pop("performance_sample_count_override"), off.pop("performance_sample_count_override")
    assert ours == pytest.approx(off)


def test_user_conf_overrides_match_official(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("# a comment\n"
                    "*.Server.target_qps = 1234.5\n"
                    "resnet50.Server.target_latency = 20\n"
                    "resnet50.*.min_query_count = 77\n"
                    "*.*.max_duration = 9000\n"
                    "*.Offline.target_qps = 0x10\n"
                    "resnet50.SingleStream.target_latency_percentile = 95\n")
    ours, off = _ours("Server", "resnet50", str(conf)), _official("Server", "resnet50", str(conf))
    assert ours == pytest.approx(off)
    assert ours["server_target_qps"] == 1234.5 and ours["server_target_latency_ns"] == 20_000_000
    assert ours["single_stream_target_latency_percentile"] == pytest.approx(0.95)


def test_precedence_exact_model_beats_wildcards(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("*.*.min_duration = 1\nresnet50.*.min_duration = 2\n*.Server.min_duration = 3\n"
                    "resnet50.Server.min_duration = 4\n")
    assert TestSettings().from_config(str(conf), "resnet50", "Server").min_duration_ms == 4
    assert TestSettings().from_config(str(conf), "bert", "Server").min_duration_ms == 3
    assert TestSettings().from_config(str(conf), "resnet50", "Offline").min_duration_ms == 2
    assert TestSettings().from_config(str(conf), "bert", "Offline").min_duration_ms == 1


@pytest.mark.parametrize("line,needle", [
    ("resnet50.Server.target_qqps = 10", "resnet50.Server.target_qqps"),
    ("resnet50.Servr.target_qps = 10", "resnet50.Servr.target_qps"),
    ("resnet50.Server.target_qps = fast", "resnet50.Server.target_qps"),
    ("resnet50.Server.target_qps = 0", "resnet50.Server.target_qps"),
    ("resnet50.Server.target_latency_percentile = 100", "target_latency_percentile"),
    ("resnet50.Server.min_query_count = -5", "resnet50.Server.min_query_count"),
    ("resnet50.Server.min_query_count = 1.5", "resnet50.Server.min_query_count"),
    ("resnet50.Server.mode = 7", "resnet50.Server.mode"),
    ("resnet50.Server.target_qps", "user.conf:1"),
    ("*.*.schedule_rng_seed = 1", "schedule_rng_seed"),
])
def test_bad_config_errors_name_the_key(tmp_path, line, needle):
    conf = tmp_path / "user.conf"
    conf.write_text(line + "\n")
    with pytest.raises(ConfigError) as e:
        TestSettings().from_config(str(conf), "resnet50", "Server")
    assert needle in str(e.value)


def test_missing_file_and_bad_scenario(tmp_path):
    with pytest.raises(ConfigError, match="nope.conf"):
        TestSettings().from_config(str(tmp_path / "nope.conf"), "resnet50", "Server")
    with pytest.raises(ConfigError, match="scenario"):
        TestSettings().from_config(None, "resnet50", "server")


def test_validate_names_the_field():
    with pytest.raises(ConfigError, match="server_target_qps"):
        TestSettings(scenario=TestScenario.Server, server_target_qps=-1).validate()
    with pytest.raises(ConfigError, match="min_query_count"):
        TestSettings(min_query_count=-1).validate()
    with pytest.raises(ConfigError, match="single_stream_target_latency_percentile"):
        TestSettings(single_stream_target_latency_percentile=1.5).validate()
