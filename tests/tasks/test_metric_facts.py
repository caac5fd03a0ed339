"""`tasks.metric_facts`: the report reads a metric's direction and sign without importing the
engine (torch); the facts it holds for the built-ins are the registry's, and a user metric of
``$PRH_METRIC_MODULES`` (or one registered in the process) is read from the registry itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tasks.metric_facts import BUILTIN_FACTS, MetricFacts, metric_facts

ROOT = Path(__file__).resolve().parents[2]


def _facts_of(spec) -> MetricFacts:
    """Read off the registration here, independently of ``tasks.metric_facts.facts_of``."""
    low, high = spec.bounds_for({})
    return MetricFacts(higher_is_better=spec.higher_is_better, signed=low < 0,
                       scaled=abs(high if spec.higher_is_better else low) != float("inf"))


def test_the_table_holds_every_builtin_registration_as_registered():
    """The table cannot drift from the registry: every built-in, no other name, the same facts."""
    from tasks.metrics import BUILTIN_SPECS

    assert sorted(BUILTIN_FACTS) == sorted(BUILTIN_SPECS)
    for name, spec in BUILTIN_SPECS.items():
        assert BUILTIN_FACTS[name] == _facts_of(spec), name


def test_a_metric_without_a_bound_on_its_better_side_is_not_scaled():
    """Its calibrated score is score - tau in its own units (``calibrate``), which `prh run`'s
    table had called "scaled to [0, 1]"; a distance bounded below by 0 is scaled."""
    import math

    from tasks.metrics import METRICS, register_metric

    names = {f"user_open_{uuid.uuid4().hex[:8]}": ((-math.inf, math.inf), True, False),
             f"user_dist_{uuid.uuid4().hex[:8]}": ((0.0, math.inf), False, True),
             f"user_logdist_{uuid.uuid4().hex[:8]}": ((-math.inf, 0.0), False, False)}
    for name, (bounds, higher, _) in names.items():
        register_metric(name, lambda x, y: 0.0, bounds=bounds, higher_is_better=higher)
    try:
        assert {name: metric_facts(name).scaled for name in names} == {name: scaled for name, (_, _, scaled) in names.items()}
    finally:
        for name in names:
            METRICS._specs.pop(name, None)


def test_a_metric_registered_in_the_process_is_read_from_the_registry():
    from tasks.metrics import METRICS, register_metric
    from tasks.report.tables import registered_direction, signed

    name = f"user_gap_{uuid.uuid4().hex[:8]}"
    register_metric(name, lambda x, y: float((x - y).abs().mean()), bounds=(-2.0, 2.0), higher_is_better=False,
                    symmetric=True)
    try:
        assert metric_facts(name) == MetricFacts(higher_is_better=False, signed=True)
        assert registered_direction(name) is False and signed(name) is True
    finally:
        METRICS._specs.pop(name, None)
    assert metric_facts(name) is None and registered_direction(name) is None and signed(name) is False


PLUGIN = '''
from tasks.metrics import register_metric


def gap(x, y):
    return float((x - y).abs().mean())


register_metric("{name}", gap, bounds=(-1.0, 1.0), higher_is_better=False, symmetric=True)
register_metric("cka", gap, bounds=(0.0, 1.0), higher_is_better=False, symmetric=True, overwrite=True)
'''

PROBE = '''
import json, sys
from tasks.report.tables import registered_direction, signed
names = sys.argv[1:]
before = "torch" in sys.modules
from tasks.report_source import load_metric_plugins
notes = load_metric_plugins()
print(json.dumps({"before": before, "torch": "torch" in sys.modules, "notes": notes,
                  "facts": {n: [registered_direction(n), signed(n)] for n in names}}))
'''


def _probe(tmp_path: Path, modules: str, names: list[str]) -> dict:
    """What a fresh process (as `prh report` starts) reads of ``names`` after loading ``modules``."""
    env = {k: v for k, v in os.environ.items() if k != "PRH_METRIC_MODULES"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]), PRH_METRIC_MODULES=modules)
    done = subprocess.run([sys.executable, "-c", PROBE, *names], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_fresh_report_process_reads_the_builtins_without_torch_and_user_metrics_from_their_module(tmp_path):
    """Without ``$PRH_METRIC_MODULES`` nothing imports the engine and the table answers, as the
    registry would; with a module that registers a lower-is-better signed metric and overwrites
    ``cka``'s direction, the registry answers for both (the table's ``cka`` is not used)."""
    from tasks.metrics import BUILTIN_SPECS

    builtins = sorted(BUILTIN_SPECS)
    plain = _probe(tmp_path, "", builtins)
    assert plain["torch"] is False and plain["notes"] == []
    assert plain["facts"] == {n: [BUILTIN_SPECS[n].higher_is_better, _facts_of(BUILTIN_SPECS[n]).signed] for n in builtins}
    metric, module = f"user_gap_{uuid.uuid4().hex[:8]}", f"prh_test_facts_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=metric))
    user = _probe(tmp_path, module, [metric, "cka", "unbiased_cka"])
    assert user["before"] is False and user["torch"] is True and user["notes"] == []
    assert user["facts"] == {metric: [False, True], "cka": [False, False], "unbiased_cka": [True, True]}


HELD_IMPORT = '''
import json, sys, threading, time
from tasks.metric_facts import metric_facts

entered = threading.Event()


def hold(frame, event, arg):  # the importing thread waits just before the built-ins are registered
    if event == "call" and frame.f_code.co_name == "register_builtins":
        entered.set()
        time.sleep(1.0)


def importer():
    sys.settrace(hold)
    import tasks.metrics  # noqa: F401


thread = threading.Thread(target=importer)
thread.start()
assert entered.wait(120)
during = {n: metric_facts(n) for n in sys.argv[1:]}
thread.join()
print(json.dumps({n: None if f is None else [f.higher_is_better, f.signed] for n, f in during.items()}))
'''


def test_a_report_thread_waits_for_an_engine_import_in_progress_in_another_thread(tmp_path):
    """While another thread imports ``tasks.metrics`` (the module in ``sys.modules``, its registry
    made but the built-ins not yet registered), the facts had been read from that empty registry:
    every built-in unregistered, so the report took ``unbiased_cka`` as unsigned and noted it as an
    unknown metric. They are the registry's once that import is done, as the engine's import had
    given them before (it waits for it)."""
    from tasks.metrics import BUILTIN_SPECS

    names = sorted(BUILTIN_SPECS)
    env = {k: v for k, v in os.environ.items() if k != "PRH_METRIC_MODULES"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", HELD_IMPORT, *names], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    during = json.loads(done.stdout.splitlines()[-1])
    assert during == {n: [BUILTIN_SPECS[n].higher_is_better, _facts_of(BUILTIN_SPECS[n]).signed] for n in names}


def test_the_builtins_facts_hold_at_every_value_of_the_pipelines_parameters():
    """The table answers for the built-ins whatever a row's ``params`` (a process without the
    engine cannot read their bounds there): ``lcs_knn``'s bounds follow ``topk``, and no built-in's
    side, open or below 0, moves with a pipeline parameter."""
    from tasks.metric_facts import facts_of
    from tasks.metrics import BUILTIN_SPECS
    from tasks.params import AlignmentParams

    for values in ({"topk": 2}, {"topk": 200, "knn_precision": "bf16"}, {"kernel_metric": "rbf", "rbf_sigma": 0.01},
                   {"cca_dim": 1}, {"cca_dim": 500}):
        params = AlignmentParams(metrics=sorted(BUILTIN_SPECS), **values)
        for name, spec in BUILTIN_SPECS.items():
            assert facts_of(spec, params.metric_params(name)) == BUILTIN_FACTS[name], (name, values)


def test_a_metrics_facts_are_read_at_the_parameters_of_its_result():
    """The review: the facts were read at the metric's defaults, so a metric whose bounds open a
    side (or reach below 0) for other parameter values was labelled by its defaults' bounds, not by
    those its calibrated scores were scaled with (``calibrate`` reads them at the run's parameters)."""
    import math

    from tasks.metrics import METRICS, register_metric
    from tasks.report.tables import chance_ratio, signed

    def bounds(params):
        if params["kernel_metric"] == "rbf":
            return (-math.inf, math.inf)
        return (-1.0, 1.0) if params["centred"] else (0.0, 1.0)

    name = f"user_kernel_{uuid.uuid4().hex[:8]}"
    register_metric(name, lambda x, y, **_: 0.0, bounds=bounds, symmetric=True,
                    defaults={"kernel_metric": "ip", "centred": False})
    try:
        assert metric_facts(name) == MetricFacts(higher_is_better=True, signed=False, scaled=True)
        assert metric_facts(name, {"kernel_metric": "rbf"}) == MetricFacts(higher_is_better=True, signed=True, scaled=False)
        # a row's params column (JSON text); a parameter the metric no longer takes is not a typo here
        assert metric_facts(name, '{"centred": true, "kernel_metric": "ip", "gone": 3}').signed
        assert metric_facts(name, "not json") == metric_facts(name)
        row = {"metric": name, "score": 0.4, "chance_level": None, "null_mean": 0.1}
        assert chance_ratio({**row, "params": '{"centred": false}'}) == (4.0, "null")
        assert chance_ratio({**row, "params": '{"centred": true}'}) is None and signed(name, {"centred": True})
    finally:
        METRICS._specs.pop(name, None)


def test_a_row_of_an_earlier_registration_is_read_at_the_defaults_where_this_one_refuses_its_params():
    """Review of the facts read at a row's ``params``: a row scored under an earlier registration
    (``scale`` then a float default, or a ``kernel_metric`` the bounds function no longer knows)
    made the current registration refuse the row's values (``scale must be an integer``, a
    KeyError of the user's bounds), and ``prh report`` of that run, and the run's closing table,
    failed on it. Those rows are read at the defaults, as a row whose params are no JSON."""
    from flows.cli import metric_notes
    from tasks.metrics import METRICS, register_metric
    from tasks.report.tables import chance_ratio

    def bounds(params):
        return {"ip": (0.0, float(params["scale"])), "rbf": (-math.inf, math.inf)}[params["kernel_metric"]]

    name = f"user_rescaled_{uuid.uuid4().hex[:8]}"
    register_metric(name, lambda x, y, **_: 0.0, bounds=bounds, symmetric=True, defaults={"kernel_metric": "ip", "scale": 3})
    try:
        at_defaults = metric_facts(name)
        assert at_defaults == MetricFacts(higher_is_better=True, signed=False, scaled=True)
        assert metric_facts(name, '{"kernel_metric": "rbf", "scale": 2}').signed  # values it takes: read there
        for earlier in ('{"kernel_metric": "ip", "scale": 2.5}', '{"kernel_metric": "linear", "scale": 2}'):
            assert metric_facts(name, earlier) == at_defaults, earlier
            row = {"metric": name, "score": 0.4, "chance_level": None, "null_mean": 0.1, "params": earlier}
            assert chance_ratio(row) == (4.0, "null")
            assert metric_notes([row]) == []
    finally:
        METRICS._specs.pop(name, None)
