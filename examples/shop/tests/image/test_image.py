"""Image tests for the shop, run by `kiln test` with testinfra against the baked image root."""

import json


def test_app_files_are_baked(host):
    assert host.file("app/__init__.py").exists
    assert host.file("app/server.py").exists


def test_behaviour_is_valid_json(host):
    behaviour = json.loads(host.file("app/behaviour.json").content_string)
    assert 0.0 <= float(behaviour["error_rate"]) <= 1.0
    assert float(behaviour["extra_latency_ms"]) >= 0


def test_app_imports(host):
    cmd = host.run('python -c "import app; print(app.Behaviour.load().version)"')
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip()
