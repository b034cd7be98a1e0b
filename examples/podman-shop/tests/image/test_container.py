"""Image tests for the podman shop, run by `kiln test` through testinfra's podman backend
against a throwaway container of the baked image."""

import json


def test_app_files_are_baked(host):
    assert host.file("/app/app/__init__.py").exists
    assert host.file("/app/app/server.py").exists


def test_behaviour_is_valid_json(host):
    behaviour = json.loads(host.file("/app/app/behaviour.json").content_string)
    assert 0.0 <= float(behaviour["error_rate"]) <= 1.0
    assert float(behaviour["extra_latency_ms"]) >= 0


def test_runs_unprivileged_on_a_read_only_root(host):
    assert host.user().name == "nobody"
    assert host.run("touch /app/x").rc != 0
    assert host.run("touch /scratch/x").rc == 0


def test_python_is_debians(host):
    assert host.package("python3").is_installed
    assert host.file("/usr/bin/python").is_symlink
