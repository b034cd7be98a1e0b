"""Table tests: every spec problem is one `file:line:col: path: message` line; valid specs parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import SpecError
from kiln.spec.loader import LoadedSpec, find_spec, found_above, load_spec
from kiln.spec.models import CommandCheck, CopyStep, HttpCheck, RunStep

VALID = """\
project: shop
images:
  web:
    steps:
      - copy: app/
        to: app/
      - run: pip install -r app/requirements.txt
    tests:
      - http: {path: /healthz, status: 200}
      - command: python -c "import app"
services:
  web:
    image: web
    command: python -m app
    listen: 127.0.0.1:8080
    replicas: 3
"""


PROM = "prometheus: {url: 'http://127.0.0.1:9090'}\n"


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> LoadedSpec:
    monkeypatch.chdir(tmp_path)
    Path("kiln.yaml").write_text(text)
    return load_spec(Path("kiln.yaml"))


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(tmp_path, monkeypatch, text)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


CASES: list[tuple[str, str, list[str]]] = [
    ("malformed yaml", "project: [shop\nimages: {}\n",
     ["kiln.yaml:2:7: invalid YAML: expected ',' or ']', but got ':' "
      "(while parsing a flow sequence)"]),
    ("tab indentation", "project: shop\n\timages: {}\n",
     ["kiln.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token "
      "(while scanning for the next token)"]),
    ("duplicate key", "project: a\nproject: b\n",
     ['kiln.yaml:2:1: invalid YAML: found duplicate key "project" with value "b" '
      '(original value: "a") (while constructing a mapping)']),
    ("empty file", "# nothing\n",
     ["kiln.yaml:1:1: the file is empty; expected a mapping with project, images and services"]),
    ("top is a list", "- project: shop\n",
     ["kiln.yaml:1:1: expected a mapping at the top level, got a list"]),
    ("top is a scalar", "shop\n", ["kiln.yaml:1:1: expected a mapping at the top level, got 'shop'"]),
    ("wrong type", edit("replicas: 3", "replicas: abc"),
     ["kiln.yaml:16:15: services.web.replicas: expected an integer, got 'abc'"]),
    ("no bool or float or text where an integer goes",
     edit("replicas: 3", "replicas: true\n    port: '8000'\n    stop_timeout: 1.5s\n"
                         "    health: {deadline: 2.0}"),
     ["kiln.yaml:16:15: services.web.replicas: expected an integer, got true",
      "kiln.yaml:17:11: services.web.port: expected an integer, got '8000'"]),
    ("out of range", edit("replicas: 3", "replicas: 0"),
     ["kiln.yaml:16:15: services.web.replicas: expected at least 1, got 0"]),
    ("unknown key with hint", edit("replicas: 3", "replica: 3"),
     ["kiln.yaml:16:5: services.web.replica: unknown field; did you mean 'replicas'?"]),
    ("unknown top-level key", VALID + "servces: {}\n",
     ["kiln.yaml:17:1: servces: unknown field; did you mean 'services'?"]),
    ("unknown key, no close match", edit("    replicas: 3", "    replicas: 3\n    zzz: 1"),
     ["kiln.yaml:17:5: services.web.zzz: unknown field; expected one of image, command, port, "
      "listen, replicas, env, secrets, health, rollout, stop_timeout, read_only_paths, "
      "resources, capabilities, logs, egress, metrics"]),
    ("missing required fields", edit("    command: python -m app\n", ""),
     ["kiln.yaml:12:3: services.web.command: missing required field"]),
    ("missing project", VALID.replace("project: shop\n", ""),
     ["kiln.yaml:1:1: project: missing required field"]),
    ("bad duration", edit("    replicas: 3", "    replicas: 3\n    health: {interval: soon}"),
     ["kiln.yaml:17:24: services.web.health.interval: expected a duration like 500ms, 30s or "
      "5m, got 'soon'"]),
    ("bad host:port", edit("127.0.0.1:8080", "127.0.0.1:http"),
     ["kiln.yaml:15:13: services.web.listen: expected host:port like 127.0.0.1:8080, "
      "got '127.0.0.1:http'"]),
    ("listen not loopback", edit("127.0.0.1:8080", "0.0.0.0:8080"),
     ["kiln.yaml:15:13: services.web.listen: listen must be a loopback address (127.0.0.0/8), "
      "got 0.0.0.0"]),
    ("service names a missing image", edit("    image: web", "    image: api"),
     ["kiln.yaml:13:12: services.web.image: unknown image 'api' (images: web)"]),
    ("missing image reported beside other errors",
     edit("    image: web", "    image: api").replace("replicas: 3", "replicas: x"),
     ["kiln.yaml:13:12: services.web.image: unknown image 'api' (images: web)",
      "kiln.yaml:16:15: services.web.replicas: expected an integer, got 'x'"]),
    ("two services on one listen address",
     VALID + "  api:\n    image: web\n    command: x\n    listen: 127.0.0.1:8080\n",
     ["kiln.yaml:20:13: services.api.listen: 127.0.0.1:8080 is already used by service web"]),
    ("unknown step", edit("      - run: pip", "      - rum: pip"),
     ["kiln.yaml:7:9: images.web.steps[1]: unknown step; expected one of copy, run, env, "
      "workdir, ansible, puppet; did you mean 'run'?"]),
    ("step that is not a mapping", edit("      - run: pip install -r app/requirements.txt",
                                        "      - pip install"),
     ["kiln.yaml:7:9: images.web.steps[1]: expected a step: a mapping with one of copy, run, "
      "env, workdir, ansible, puppet, got 'pip install'"]),
    ("bad field inside a step names that field", edit("        to: app/", "        to: [a]"),
     ["kiln.yaml:6:13: images.web.steps[0].to: expected a string, got a list"]),
    ("unknown check", edit("      - command: python", "      - cmd: python"),
     ["kiln.yaml:10:9: images.web.tests[1]: unknown check; expected one of http, command, port, "
      "file, testinfra; did you mean 'command'?"]),
    ("bad field inside a check", edit("status: 200", "status: 999"),
     ["kiln.yaml:9:40: images.web.tests[0].http.status: expected at most 599, got 999"]),
    ("command check of the wrong type", edit('command: python -c "import app"', "command: 5"),
     ["kiln.yaml:10:18: images.web.tests[1].command: expected a command string or a mapping "
      "with run:, got 5"]),
    ("invalid image name", edit("  web:\n    steps", "  Web:\n    steps"),
     ["kiln.yaml:3:3: images.Web: invalid name: expected a lowercase letter followed by up to "
      "39 lowercase letters, digits or dashes, got 'Web'",
      "kiln.yaml:13:12: services.web.image: unknown image 'web' (images: Web)"]),
    ("rollout weight and pause", VALID + """\
    rollout:
      steps:
        - {weight: 10, pause: 30s}
        - {weight: 150, pause: -1}
""", ["kiln.yaml:20:20: services.web.rollout.steps[1].weight: expected at most 100, got 150",
      "kiln.yaml:20:32: services.web.rollout.steps[1].pause: expected a non-negative duration"]),
    ("analysis: negative, over 100%, all reported", VALID + """\
    rollout:
      analysis:
        max_error_rate_increase: 120%
        max_latency_increase: -5%
        min_requests: -1
""", ["kiln.yaml:19:34: services.web.rollout.analysis.max_error_rate_increase: expected a rate "
      "between 0% and 100%, got 1.2",
      "kiln.yaml:20:31: services.web.rollout.analysis.max_latency_increase: expected a "
      "non-negative relative increase like 25%, got -0.05",
      "kiln.yaml:21:23: services.web.rollout.analysis.min_requests: expected a non-negative "
      "number of requests"]),
    ("analysis.metrics: wrong queries, no $release, bad kind, twice", PROM + VALID + """\
    rollout:
      analysis:
        metrics:
          - {name: checkout, kind: count, failures: 'sum(x{release="$release"})', query: up}
          - {name: queue, kind: value, query: 'avg(q)', max_increase: 25%}
          - {name: conv, kind: ratio, query: 'x{release="$release"}', max_increase: 1%}
          - {name: a, kind: count, failures: 'f{release="$release"}',
             total: 't{release="$release"}', max_increase: 1%}
          - {name: a, kind: value, query: 'v{release="$release"}', max_increase: 5%,
             direction: sideways}
""", ["kiln.yaml:21:13: services.web.rollout.analysis.metrics[0].max_increase: missing "
      "required field",
      "kiln.yaml:22:13: services.web.rollout.analysis.metrics[1]: query: expected a PromQL "
      "query with $release in it (kiln substitutes each release), got 'avg(q)'",
      "kiln.yaml:23:32: services.web.rollout.analysis.metrics[2].kind: expected 'count' or "
      "'value', got 'ratio'",
      "kiln.yaml:27:25: services.web.rollout.analysis.metrics[4].direction: expected 'higher' "
      "or 'lower', got 'sideways'"]),
    ("analysis.metrics: a count metric with a query", PROM + VALID + """\
    rollout:
      analysis:
        metrics:
          - {name: c, kind: count, failures: 'f{release="$release"}', query: up,
             max_increase: 1%}
""", ["kiln.yaml:21:13: services.web.rollout.analysis.metrics[0]: a count metric takes "
      "failures and total, not query"]),
    ("analysis.metrics: one name twice", PROM + VALID + """\
    rollout:
      analysis:
        metrics:
          - {name: a, kind: value, query: 'v{release="$release"}', max_increase: 5%}
          - {name: a, kind: value, query: 'w{release="$release"}', max_increase: 5%}
""", ["kiln.yaml:20:9: services.web.rollout.analysis.metrics: metric names must be unique, "
      "seen twice: a"]),
    ("analysis.metrics without a Prometheus", VALID + """\
    rollout:
      analysis:
        metrics:
          - {name: a, kind: value, query: 'v{release="$release"}', max_increase: 5%}
""", ["kiln.yaml:19:9: services.web.rollout.analysis.metrics: metrics are read from "
      "Prometheus; set services.web.metrics: {path: /metrics} (kiln runs one that scrapes the "
      "service) or prometheus: {url: ...} (your own)"]),
    ("metrics: a path without /", VALID + "    metrics: {path: metrics}\n",
     ["kiln.yaml:17:21: services.web.metrics.path: expected a path starting with / (no "
      "spaces), got 'metrics'"]),
    # A health path goes into each request line and into HAProxy's health map (a line per
    # release): one without / or with a line break was accepted before.
    ("health: a path without /", VALID + "    health: {path: healthz}\n",
     ["kiln.yaml:17:20: services.web.health.path: expected a path starting with / (no "
      "spaces), got 'healthz'"]),
    ("health: a path with a line break", VALID + "    health: {path: \"/a\\nb\"}\n",
     ["kiln.yaml:17:20: services.web.health.path: expected a path starting with / (no "
      "spaces), got '/a\\nb'"]),
    ("tests: an http path with a space", edit("{path: /healthz, status", "{path: /a b, status"),
     ["kiln.yaml:9:22: images.web.tests[0].http.path: expected a path starting with / (no "
      "spaces), got '/a b'"]),
    ("prometheus url", "prometheus: {url: 'ftp://x'}\n" + VALID,
     ["kiln.yaml:1:19: prometheus.url: expected an http(s) URL like http://127.0.0.1:9090, "
      "got 'ftp://x'"]),
    ("analysis: promote with no data", VALID + """\
    rollout:
      analysis: {min_requests: 0, on_no_data: promote}
""", ["kiln.yaml:18:7: services.web.rollout.analysis: min_requests 0 with on_no_data promote "
      "would pass a canary that served nothing; set min_requests > 0 or on_no_data "
      "pause|rollback"]),
    ("bad literal", VALID + "    rollout: {strategy: yolo}\n",
     ["kiln.yaml:17:25: services.web.rollout.strategy: expected 'canary', 'blue-green' or "
      "'rolling', got 'yolo'"]),
    ("custom tag refused", edit("project: shop", "project: !!python/name:os.system"),
     ["kiln.yaml:1:10: project: unsupported YAML tag tag:yaml.org,2002:python/name:os.system"]),
    ("non-text key", VALID + "1: x\n", ["kiln.yaml:17:1: keys must be text, got 1"]),
    ("many problems, in file order", "project: Shop\nplatform: mars\nimages: []\n",
     ["kiln.yaml:1:10: project: expected a lowercase letter followed by up to 39 lowercase "
      "letters, digits or dashes, got 'Shop'",
      "kiln.yaml:2:11: platform: expected 'local', 'podman' or 'aws', got 'mars'",
      "kiln.yaml:3:9: images: expected a mapping, got a list"]),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_problem_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                       expected: list[str]) -> None:
    assert problems(tmp_path, monkeypatch, text) == expected


def test_missing_file_names_the_path_as_given(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec(Path("kiln.yaml"))
    assert info.value.problems == ["kiln.yaml: file not found"]


def test_find_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=r"^kiln.yaml: file not found"):
        find_spec(None, None)
    assert find_spec(None, Path("other.yaml")) == Path("other.yaml")
    Path("kiln.yaml").write_text(VALID)
    assert find_spec(None, None) == Path("kiln.yaml")
    assert find_spec(tmp_path, None) == Path("kiln.yaml")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "kiln.yaml").write_text(VALID)
    assert find_spec(sub, None) == Path("sub/kiln.yaml")


def test_find_spec_in_parent_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As git finds its repository: the nearest kiln.yaml above, named relative to the cwd."""
    (tmp_path / "kiln.yaml").write_text(VALID)
    deep = tmp_path / "app" / "src"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    found = find_spec(None, None)
    assert found == Path("../../kiln.yaml")
    assert found.resolve() == (tmp_path / "kiln.yaml").resolve()
    assert found_above(found)
    monkeypatch.chdir(tmp_path)
    assert not found_above(find_spec(None, None))
    (tmp_path / "app" / "kiln.yaml").write_text(VALID)  # the nearest one wins
    monkeypatch.chdir(deep)
    assert find_spec(None, None) == Path("../kiln.yaml")


def test_valid_spec_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load(tmp_path, monkeypatch, VALID + """\
    env: {GREETING: hello, DEBUG: true, WORKERS: 4}
    health: {path: /healthz, interval: 500ms, timeout: 2, deadline: 1m}
    rollout:
      steps:
        - {weight: 10, pause: 30s}
        - {weight: 50}
      analysis:
        max_error_rate_increase: 0.01
        max_latency_increase: 25%
        min_requests: 0
        on_no_data: rollback
""")
    assert loaded.path == Path("kiln.yaml")
    assert loaded.base_dir == tmp_path.resolve()
    assert loaded.text.startswith("project: shop")
    spec = loaded.spec
    assert spec.platform == "local"
    image = spec.images["web"]
    assert image.base == "python"
    assert image.steps == [CopyStep(source="app/", to="app/"),
                           RunStep(run="pip install -r app/requirements.txt")]
    assert isinstance(image.tests[0], HttpCheck)
    assert image.tests[0].http.path == "/healthz"
    assert isinstance(image.tests[1], CommandCheck)
    assert image.tests[1].spec.run == 'python -c "import app"'
    svc = spec.services["web"]
    assert svc.listen == "127.0.0.1:8080"
    assert svc.port == 8000
    assert svc.env == {"GREETING": "hello", "DEBUG": "true", "WORKERS": "4"}
    assert (svc.health.interval, svc.health.timeout, svc.health.deadline) == (0.5, 2.0, 60.0)
    assert [(s.weight, s.pause) for s in svc.rollout.steps] == [(10, 30.0), (50, None)]
    assert svc.rollout.analysis is not None
    assert svc.rollout.analysis.max_latency_increase == 0.25
    assert svc.rollout.analysis.min_requests == 0


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8080", "127.0.0.1:8080"), ("8081", "127.0.0.1:8081"), ("9090", "127.0.0.1:9090"),
    ("localhost:80", "localhost:80"), ("127.0.0.2:08080", "127.0.0.2:8080")])
def test_listen_host_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listen: str,
                          expected: str) -> None:
    spec = load(tmp_path, monkeypatch, edit("127.0.0.1:8080", listen)).spec
    assert spec.services["web"].listen == expected


def test_yaml_features_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anchors, merge keys, block scalars and a UTF-8 BOM are ordinary YAML; they must load."""
    text = "\ufeff" + VALID.replace("    replicas: 3", """\
    replicas: 3
    env: &common {A: "1"}
    secrets:
      DB: env:DB
  worker:
    <<: {image: web, command: "python -m app", replicas: 1}
    listen: 127.0.0.1:8081
    env: *common
""")
    spec = load(tmp_path, monkeypatch, text).spec
    assert spec.services["worker"].env == {"A": "1"}
    assert spec.services["worker"].command == "python -m app"


def test_alias_bomb_is_a_spec_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "project: shop\nimages:\n" + "\n".join("  " + line for line in lines) + "\n"
    assert problems(tmp_path, monkeypatch, text) == [
        "kiln.yaml:1:1: too many values (more than 50000; aliases expand too much)"]
