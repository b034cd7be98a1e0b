"""What an instance runs at first boot (its user data), and the scripts it leaves behind.

User data writes, for service `web`:
- `/etc/kiln-web.env`: the service's plain environment (KEY=VALUE lines);
- `/etc/kiln-web.secrets.sh`: secret *references* only (`ssm:/path`, `secretsmanager:ARN`),
  each fetched with the AWS CLI and the instance profile when it is sourced;
- `/etc/kiln-web.exec`: `kiln-web.exec CMD` runs CMD in the service's environment (image env,
  service env, secrets, workdir, the image's venv on PATH). The service's unit starts through
  it, and so do `kiln exec` and image checks over SSM: one environment, defined once.
- a systemd unit `kiln-web` whose output goes to the journal (`kiln logs` reads it over SSM).

No secret value is ever in user data, the launch template or kiln's state: AWS stores user
data in the clear and shows it to anyone with ec2:DescribeInstanceAttribute.
"""

from __future__ import annotations

import base64
import posixpath
import shlex
from collections.abc import Mapping

from kiln.errors import KilnError
from kiln.spec.models import ServiceSpec

ROOT = "/opt/kiln/root"
"""Where the image's files live on the AMI; services run with it as working directory."""
IMAGE_ENV = "/opt/kiln/env"
"""Written by `env:` bake steps."""
REMOTE_SCHEMES = ("ssm", "secretsmanager")


def unit(service_name: str) -> str:
    return f"kiln-{service_name}"


def exec_script(service_name: str) -> str:
    return f"/etc/{unit(service_name)}.exec"


def secret_lines(service_name: str, secrets: Mapping[str, str], region: str) -> list[str]:
    """Shell lines that fetch each secret by reference with the instance profile. Refuses
    local references (`env:`, `file:`): they would have to be written into user data."""
    out = []
    for key, ref in sorted(secrets.items()):
        scheme, _, target = ref.partition(":")
        if scheme == "ssm":
            fetch = (f"aws ssm get-parameter --region {shlex.quote(region)} --with-decryption "
                     f"--name {shlex.quote(target)} --query Parameter.Value --output text")
        elif scheme == "secretsmanager":
            fetch = (f"aws secretsmanager get-secret-value --region {shlex.quote(region)} "
                     f"--secret-id {shlex.quote(target)} --query SecretString --output text")
        else:
            raise KilnError(refusal(service_name, key, ref))
        out += [f'{key}="$({fetch})"', f"export {key}"]
    return out


def refusal(service_name: str, key: str, ref: str) -> str:
    return (f"services.{service_name}.secrets.{key}: {ref.partition(':')[0]}: secrets are not "
            "supported on platform aws (they would be stored in user data); use "
            "ssm:/parameter/name or secretsmanager:ARN, fetched by the instance profile")


def user_data(service_name: str, service: ServiceSpec, env: Mapping[str, str], workdir: str,
              region: str) -> str:
    """The first-boot script (RunInstances takes it as is: boto3 base64-encodes it; a launch
    template takes it base64-encoded: `encoded`)."""
    name = unit(service_name)
    cwd = posixpath.join(ROOT, workdir) if workdir else ROOT
    env_lines = [f"{k}={v}" for k, v in sorted(env.items())]
    env_lines += ["HOST=0.0.0.0", f"PORT={service.port}"]
    env_file = "\n".join(env_lines)
    secrets = "\n".join(["# secret references; values are fetched when sourced", "set -e",
                         *secret_lines(service_name, service.secrets, region)])
    runner = f"""#!/bin/sh
# {name}.exec CMD: run CMD in the service's environment (image env, service env, secrets).
set -e
kiln_load() {{
  while IFS= read -r l || [ -n "$l" ]; do
    case "$l" in ''|'#'*) ;; *) export "$l";; esac
  done < "$1"
}}
[ ! -f {IMAGE_ENV} ] || kiln_load {IMAGE_ENV}
kiln_load /etc/{name}.env
. /etc/{name}.secrets.sh
export PATH={ROOT}/.venv/bin:/usr/local/bin:/usr/bin:/bin
cd {shlex.quote(cwd)}
exec /bin/sh -c "$1"
"""
    script = f"""#!/bin/sh
set -e
mkdir -p /opt/kiln {shlex.quote(cwd)}
touch {IMAGE_ENV}
cat > /etc/{name}.env <<'KILN_ENV'
{env_file}
KILN_ENV
cat > /etc/{name}.secrets.sh <<'KILN_SECRETS'
{secrets}
KILN_SECRETS
chmod 600 /etc/{name}.secrets.sh
cat > /etc/{name}.exec <<'KILN_EXEC'
{runner}KILN_EXEC
chmod 700 /etc/{name}.exec
cat > /etc/systemd/system/{name}.service <<'KILN_UNIT'
[Unit]
Description=kiln service {service_name}
After=network-online.target
[Service]
ExecStart=/bin/sh /etc/{name}.exec {shlex.quote(service.command)}
Restart=always
KillSignal=SIGTERM
TimeoutStopSec={int(service.stop_timeout)}
[Install]
WantedBy=multi-user.target
KILN_UNIT
systemctl daemon-reload
systemctl enable --now {name}
"""
    return script


def encoded(script: str) -> str:
    return base64.b64encode(script.encode()).decode()


def exec_lines(service_name: str, command: str) -> list[str]:
    """An SSM command running `command` in the service's environment on its instance."""
    return [f"/bin/sh {exec_script(service_name)} {shlex.quote(command)}"]


def journal_lines(service_name: str, lines: int | None, after: str | None = None,
                  cursor: bool = False) -> list[str]:
    """The service's journal (its stdout and stderr): the last `lines` (all when None), only
    the entries after the cursor `after`; with `cursor`, journald's cursor after the last one
    ends the output (`-- cursor: ...`)."""
    args = [f"journalctl -u {unit(service_name)} --no-pager -o cat"]
    if after is not None:
        args.append(f"--after-cursor={shlex.quote(after)}")
    elif lines is not None:
        args.append(f"-n {int(lines)}")
    if cursor:
        args.append("--show-cursor")
    return [" ".join(args)]
