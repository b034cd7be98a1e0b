"""`router_admin:` in kiln.yaml: accepted where kiln runs Traefik, refused elsewhere with one
line naming the key (pure); Traefik serves its admin API there, and a taken address is one line
naming the key and the holder (e2e)."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from pydantic import ValidationError

from kiln.platforms.local.traefik_process import port_free, read_pidfile
from kiln.spec.models import Spec
from kiln.testing.project import Proj, free_port


def spec(**top: Any) -> dict[str, Any]:
    return {"project": "shop", **top,
            "images": {"web": {"base": "python", "steps": []}},
            "services": {"web": {"image": "web", "command": "python -m app",
                                 "listen": "127.0.0.1:8080"}}}


def test_router_admin_is_kept() -> None:
    assert Spec.model_validate(spec(router_admin="127.0.0.1:9180")).router_admin == \
        "127.0.0.1:9180"
    assert Spec.model_validate(spec()).router_admin is None


@pytest.mark.parametrize(("top", "words"), [
    ({"router": "haproxy", "router_admin": "127.0.0.1:9180"}, "applies to router traefik"),
    ({"router_admin": "10.0.0.1:9180"}, "expected a loopback HOST:PORT"),
    ({"router_admin": "127.0.0.1:8080"}, "is services.web.listen"),
])
def test_router_admin_refused_where_it_cannot_apply(top: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Spec.model_validate(spec(**top))
    lines = [e["msg"] for e in info.value.errors()]
    assert len(lines) == 1 and "router_admin:" in lines[0] and words in lines[0], lines


@pytest.mark.e2e
def test_traefik_serves_its_admin_api_where_the_spec_says(proj: Proj) -> None:
    admin = f"127.0.0.1:{free_port()}"

    def with_admin(address: str) -> None:
        path = proj.dir / "kiln.yaml"
        text = re.sub(r"(?m)^router_admin: .*\n", "", path.read_text())
        path.write_text(text.replace("router: traefik\n",
                                     f"router: traefik\nrouter_admin: {address}\n", 1))

    with_admin(admin)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    running = read_pidfile(proj.dir / ".kiln" / "router" / "traefik.pid")
    assert running is not None and running.admin == admin
    assert not port_free(admin)
    # Another address, held by someone else: one line naming the key and the holder.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = f"127.0.0.1:{s.getsockname()[1]}"
        with_admin(taken)
        res = proj.kiln("deploy")
    assert res.returncode != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert any(f"{taken} (router_admin) is already in use by" in line for line in lines), \
        res.stderr
    assert "Traceback" not in res.stderr
