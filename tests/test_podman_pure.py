"""The podman platform's pure parts, table-tested: steps -> Containerfile, the `podman run`
hardening, exec of a lone command, Debian base tags, resource sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln.errors import BakeError
from kiln.platforms.base import Image
from kiln.platforms.podman import containerfile, debian_base
from kiln.platforms.podman.compute import PodmanCompute, container_command, exec_form
from kiln.platforms.podman.image_files import container_path
from kiln.spec.models import ImageSpec, ServiceSpec
from kiln.spec.podman import DebianBase, Resources
from kiln.state.store import Store

STAGED = {1: containerfile.Staged("1", True, "app"),
          3: containerfile.Staged("3/app.cfg", False, "app.cfg")}


def test_each_step_is_one_instruction_in_order() -> None:
    spec = ImageSpec.model_validate({"steps": [
        {"copy": "app/", "to": "app/"}, {"run": "echo 'hi there' && touch x"},
        {"copy": "app.cfg", "to": "etc/"}, {"env": {"A": "1", "B": 'say "hi"'}},
        {"workdir": "srv"}, {"run": "ls"}]})
    text = containerfile.render("sha256:abc", spec.steps, STAGED, {"kiln.key": "k1"}, "web")
    assert text.splitlines() == [
        "FROM sha256:abc",
        "WORKDIR /app",
        'COPY ["1/", "/app/app/"]',
        'RUN ["/bin/sh", "-c", "echo \'hi there\' && touch x"]',
        'COPY ["3/app.cfg", "/app/etc/app.cfg"]',
        'ENV A="1" B="say \\"hi\\""',
        "WORKDIR /app/srv",
        'RUN ["/bin/sh", "-c", "ls"]',
        'LABEL kiln.key="k1"',
    ]
    assert containerfile.PREAMBLE == 2  # user step i is podman's STEP i + 2


@pytest.mark.parametrize(("to", "dest"), [
    (".", "/app/app.cfg"), ("conf/", "/app/conf/app.cfg"), ("conf/x.cfg", "/app/conf/x.cfg"),
    ("/etc/app.cfg", "/etc/app.cfg"),
])
def test_a_file_lands_where_the_local_bake_puts_it(to: str, dest: str) -> None:
    spec = ImageSpec.model_validate({"steps": [{"copy": "app.cfg", "to": to}]})
    staged = {1: containerfile.Staged("1/app.cfg", False, "app.cfg")}
    line = containerfile.render("b", spec.steps, staged, {}).splitlines()[2]
    assert line == f'COPY ["1/app.cfg", "{dest}"]'


@pytest.mark.parametrize("step", [{"copy": "app/", "to": "../../etc/"}, {"workdir": "../x"}])
def test_a_relative_path_leaving_the_image_root_is_refused(step: dict[str, str]) -> None:
    spec = ImageSpec.model_validate({"steps": [step]})
    with pytest.raises(BakeError, match=r"images\.web\.steps\[0\]: .* leaves the image"):
        containerfile.render("b", spec.steps, {1: containerfile.Staged("1", True, "app")}, {},
                             "web")


def test_an_env_value_with_a_line_break_is_refused() -> None:
    spec = ImageSpec.model_validate({"steps": [{"env": {"A": "one\ntwo"}}]})
    with pytest.raises(BakeError, match="line break"):
        containerfile.render("b", spec.steps, {}, {})


@pytest.mark.parametrize(("command", "expected"), [
    ("python -m app", "exec python -m app"),
    ("gunicorn -b 0.0.0.0:8000 app:wsgi", "exec gunicorn -b 0.0.0.0:8000 app:wsgi"),
    ("FOO=1 python -m app", "FOO=1 exec python -m app"),
    ("A='x y' B=\"q \\\" r\" C= python app.py", "A='x y' B=\"q \\\" r\" C= exec python app.py"),
    ("python -c 'import a; a.run()'", "exec python -c 'import a; a.run()'"),
    ("exec python -m app", "exec python -m app"),
    ("A=1 exec python -m app", "A=1 exec python -m app"),
    ("migrate && python -m app", None),
    ("cd srv && python -m app", None),
    ("python -m app | tee log", None),
    ("python -m app > /scratch/log", None),
    ("python -m app &", None),
    ("(python -m app)", None),
    ("echo $(date); python -m app", None),
    ("echo `date`", None),
    ("python -m app\necho done", None),
    ("if true; then python -m app; fi", None),
    ("! python -m app", None),
    ("FOO=1", None),
    ("python -c 'unbalanced", None),
])
def test_a_simple_command_is_execed(command: str, expected: str | None) -> None:
    assert exec_form(command) == expected


def test_a_compound_command_runs_under_a_group_forwarding_init() -> None:
    assert container_command("python -m app") == ["/bin/sh", "-c", "exec python -m app"]
    argv = container_command("cd srv && python -m app")
    assert argv[:5] == ["/run/podman-init", "-g", "--", "/bin/sh", "-c"]
    assert argv[5].startswith("trap exit HUP INT QUIT TERM;")
    assert argv[5].endswith("\ncd srv && python -m app")


def _run_argv(tmp_path: Path, spec: dict[str, object]) -> tuple[PodmanCompute, list[str]]:
    store = Store.open(tmp_path)
    try:
        compute = PodmanCompute(store, tmp_path, "shop")
        svc = ServiceSpec.model_validate({
            "image": "web", "command": "python -m app", "port": 8000,
            "listen": "127.0.0.1:8080", **spec})
        image = Image("web", "sha256:" + "a" * 64, "sha256:" + "a" * 64)
        argv = compute.run_argv("kiln-shop-x-web-r1-abc", "web-r1-abc", "service", svc,
                                "127.80.0.3", image, {"PORT": "8000"}, secret_keys=["TOKEN"])
    finally:
        store.close()
    return compute, argv


def test_containers_are_locked_down_on_their_projects_network(tmp_path: Path) -> None:
    compute, argv = _run_argv(tmp_path, {"resources": {"cpus": 0.5, "memory": "128M",
                                                       "pids": 64},
                                         "capabilities": ["NET_BIND_SERVICE"]})
    joined = " ".join(argv)
    tmpfs = "rw,nosuid,nodev,size=64m,mode=1777"
    for flag in ("--read-only", "--user 65534:65534", "--cap-drop=all", "--init",
                 "--security-opt no-new-privileges", f"--network kiln-shop-{compute.scope}",
                 f"--tmpfs /tmp:{tmpfs}", f"--tmpfs /var/tmp:{tmpfs}",
                 f"--tmpfs /scratch:{tmpfs}", "--pids-limit 64",
                 "--cpus 0.5", f"--memory {128 * 1024 * 1024} --memory-swap {128 * 1024 * 1024}",
                 "--cap-add NET_BIND_SERVICE",
                 "--env PORT=8000", "--pull=never", "--workdir /app"):
        assert flag in joined, flag
    assert "--publish" not in argv  # publishing does not work on an internal network
    assert argv[argv.index("--env", argv.index("--env") + 1) + 1] == "TOKEN"  # name, no value
    assert argv[-4:] == ["sha256:" + "a" * 64, "/bin/sh", "-c", "exec python -m app"]


def test_defaults_limit_memory_and_pids_and_egress_picks_the_routed_network(
        tmp_path: Path) -> None:
    compute, argv = _run_argv(tmp_path, {"egress": True})
    joined = " ".join(argv)
    assert f"--memory {512 * 1024 * 1024} --memory-swap {512 * 1024 * 1024}" in joined
    assert "--pids-limit 512" in joined and "--cpus" not in argv
    assert f"--network kiln-shop-{compute.scope}-egress" in joined
    labels = ["--label", "kiln.project=shop", "--label", f"kiln.scope={compute.scope}"]
    assert compute.network_create_argv(False) == [
        "network", "create", *labels, "--internal", f"kiln-shop-{compute.scope}"]
    assert compute.network_create_argv(True) == [
        "network", "create", *labels, "--opt", "isolate=true", f"kiln-shop-{compute.scope}-egress"]


def test_debian_bases_are_tagged_by_their_inputs() -> None:
    a = debian_base.tag(DebianBase(debian="bookworm", packages=["python3", "curl"]))
    b = debian_base.tag(DebianBase(debian="bookworm", packages=["curl", "python3", "curl"]))
    c = debian_base.tag(DebianBase(debian="bookworm", packages=["python3"]))
    assert a == b != c and a.startswith("localhost/kiln-base/debian:bookworm-")


@pytest.mark.parametrize(("text", "size"), [
    ("128M", 128 * 1024**2), ("1g", 1024**3), ("512MiB", 512 * 1024**2), (7_000_000, 7_000_000),
])
def test_memory_sizes(text: object, size: int) -> None:
    assert Resources.model_validate({"memory": text}).memory == size


@pytest.mark.parametrize("bad", [{"memory": "lots"}, {"memory": "1k"}, {"cpus": 0}])
def test_bad_resources_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Resources.model_validate(bad)


def test_a_debian_base_on_the_local_platform_names_podman(tmp_path: Path) -> None:
    from kiln.platforms.local.builder import LocalBuilder

    store = Store.open(tmp_path)
    try:
        spec = ImageSpec.model_validate({"base": {"debian": "bookworm"}, "steps": []})
        with pytest.raises(BakeError, match="needs platform: podman"):
            LocalBuilder(store, tmp_path).build("web", spec, base_dir=tmp_path)
    finally:
        store.close()


@pytest.mark.parametrize(("path", "inside"), [
    ("app.cfg", "/app/app.cfg"), ("etc/x", "/app/etc/x"), ("/etc/os-release", "/etc/os-release"),
    ("../etc/passwd", "/etc/passwd"), ("../../../x", "/x"), ("//a", "/a"), (".", "/app"),
])
def test_file_check_paths_are_under_the_image_root_or_absolute(path: str, inside: str) -> None:
    assert container_path(path) == inside
