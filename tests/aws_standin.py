"""A test double for SSM Run Command: every EC2 instance moto knows gets a local stand-in (a
folder standing for its disk), and each command kiln sends over SSM really runs there.

moto's SSM answers every command with exit 0 and no output and runs nothing; kiln must not
special-case that, so the tests that need real results patch the `ssm` client's
`send_command` / `get_command_invocation` (in the test process only) with this double:

- an instance boots on its first command: its disk is a copy of the builder's disk whose bake
  made its AMI (matched by the `kiln:input-key` tag), then its user data runs;
- absolute paths kiln uses on an instance (/opt/kiln, /etc/, /tmp/kiln-) are rewritten into
  the stand-in's folder; `systemctl`, `journalctl` and `aws` are small local shims (the
  service runs as a local process whose output is its "journal"; `aws ssm get-parameter` and
  `aws secretsmanager get-secret-value` read moto, as the instance profile would read AWS);
- the service of an instance that moto reports terminated is killed (`reap`), so a test can
  prove that kiln's cleanup really stopped what it started.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from kiln.platforms.aws.client import Aws
from kiln.testing.moto import REGION, MotoServer
from kiln.testing.project import wait_for

SYSTEMCTL = """#!/bin/sh
# stand-in systemctl: `enable --now UNIT` starts the unit's ExecStart as a local process
case "$1" in
  enable) ;;
  *) exit 0 ;;
esac
unit="$3"
exec_start=$(sed -n 's/^ExecStart=//p' "{root}/etc/systemd/system/$unit.service")
mkdir -p "{root}/journal" "{root}/run"
setsid sh -c "$exec_start" >> "{root}/journal/$unit.log" 2>&1 < /dev/null &
echo $! > "{root}/run/$unit.pid"
"""

JOURNALCTL = """#!/bin/sh
# stand-in journalctl -u UNIT --no-pager -o cat [-n N | --after-cursor=C] [--show-cursor]:
# the journal is the service's output file, a cursor is the number of whole lines read
unit="$2"; n=all; after=""; show=""
for a in "$@"; do
  case "$a" in --after-cursor=*) after="${a#--after-cursor=}";; --show-cursor) show=1;; esac
done
while [ $# -gt 0 ]; do [ "$1" = "-n" ] && n="$2"; shift; done
log="{root}/journal/$unit.log"
[ -f "$log" ] || exit 0
total=$(wc -l < "$log")
if [ -n "$after" ]; then
  [ "$total" -gt "$after" ] || exit 0
  head -n "$total" "$log" | tail -n +"$((after + 1))"
elif [ "$n" = all ]; then head -n "$total" "$log"
else head -n "$total" "$log" | tail -n "$n"; fi
[ -z "$show" ] || [ "$total" -eq 0 ] || echo "-- cursor: $total"
"""

AWS_CLI = """#!{python}
# stand-in AWS CLI: the two reads an instance profile makes for kiln's secrets, against moto
import sys, boto3
args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1]
service, op = args[0], args[1]
client = boto3.client(service, region_name=opt("--region"))
try:
    if (service, op) == ("ssm", "get-parameter"):
        print(client.get_parameter(Name=opt("--name"), WithDecryption=True)["Parameter"]["Value"])
    elif (service, op) == ("secretsmanager", "get-secret-value"):
        print(client.get_secret_value(SecretId=opt("--secret-id"))["SecretString"])
    else:
        sys.exit(f"stand-in aws: {service} {op} not supported")
except Exception as exc:
    sys.exit(f"An error occurred: {exc}")
"""


class StandIns:
    """Stand-ins of the instances of one moto server, rooted in `folder`."""

    def __init__(self, folder: Path, moto: MotoServer,
                 tools: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.tools = tools or {}  # more stand-in programs on the instances (name -> script)
        self.ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
        self.roots: dict[str, Path] = {}  # instance id -> its disk
        self.keys: dict[str, str] = {}  # input key -> the builder instance that baked it
        self.results: dict[str, dict[str, Any]] = {}
        self.commands: list[tuple[str, str]] = []  # (instance, script) as kiln sent them
        self.fail_next: list[str] = []  # substrings: the next command containing one fails
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ patching

    def install(self, monkeypatch: Any) -> None:
        """Every `Aws` of this process gets the double on its ssm client."""
        original = Aws.client
        standins = self

        def client(aws: Aws, service: str) -> Any:
            c = original(aws, service)
            if service == "ssm" and not getattr(c, "_standin", False):
                c.send_command = standins.send_command
                c.get_command_invocation = standins.get_command_invocation
                c._standin = True
            return c

        monkeypatch.setattr(Aws, "client", client)

    # ------------------------------------------------------------ the SSM API

    def send_command(self, *, InstanceIds: list[str], Parameters: dict[str, list[str]],
                     **_: Any) -> dict[str, Any]:
        (iid,) = InstanceIds
        root = self._boot(iid)
        script = self._rewrite("\n".join(Parameters["commands"]), root)
        self.commands.append((iid, "\n".join(Parameters["commands"])))
        timeout = float(Parameters.get("executionTimeout", ["600"])[0])
        command_id = f"cmd-{next(self._ids)}"
        failing = next((f for f in self.fail_next if f in script), None)
        if failing is not None:
            self.fail_next.remove(failing)
            self.results[command_id] = {"Status": "Failed", "ResponseCode": 1,
                                        "StandardOutputContent": "",
                                        "StandardErrorContent": f"injected failure ({failing})"}
            return {"Command": {"CommandId": command_id}}
        code, out, err = self._run(script, root, timeout)
        self.results[command_id] = {
            "Status": "Success" if code == 0 else "Failed", "ResponseCode": code,
            "StandardOutputContent": out[:24_000], "StandardErrorContent": err[:8_000]}
        return {"Command": {"CommandId": command_id}}

    def get_command_invocation(self, *, CommandId: str, InstanceId: str,
                               **_: Any) -> dict[str, Any]:
        if CommandId not in self.results:
            raise ClientError({"Error": {"Code": "InvocationDoesNotExist", "Message": "no"}},
                              "GetCommandInvocation")
        return {"CommandId": CommandId, "InstanceId": InstanceId, **self.results[CommandId]}

    # ------------------------------------------------------------ instances

    def _describe(self, iid: str) -> dict[str, Any]:
        try:
            res = self.ec2.describe_instances(InstanceIds=[iid])
        except ClientError as exc:
            raise ClientError({"Error": {"Code": "InvalidInstanceId", "Message": str(exc)}},
                              "SendCommand") from exc
        return dict(res["Reservations"][0]["Instances"][0])

    def _boot(self, iid: str) -> Path:
        with self._lock:
            desc = self._describe(iid)
            if desc["State"]["Name"] not in ("pending", "running"):
                raise ClientError({"Error": {"Code": "InvalidInstanceId",
                                             "Message": f"{iid} is {desc['State']['Name']}"}},
                                  "SendCommand")
            if iid in self.roots:
                return self.roots[iid]
            root = self.folder / iid
            tags = {t["Key"]: t["Value"] for t in desc.get("Tags", [])}
            image = self.ec2.describe_images(ImageIds=[desc["ImageId"]])["Images"]
            key = {t["Key"]: t["Value"] for t in (image[0].get("Tags", []) if image else [])
                   }.get("kiln:input-key")
            if key and key in self.keys:  # the AMI's disk is its builder's
                shutil.copytree(self.roots[self.keys[key]], root, symlinks=True)
                shutil.rmtree(root / "journal", ignore_errors=True)
                shutil.rmtree(root / "run", ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            self._shims(root)
            if tags.get("kiln:role") == "builder" and "kiln:input-key" in tags:
                self.keys[tags["kiln:input-key"]] = iid
            self.roots[iid] = root
        data = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        encoded = data.get("UserData", {}).get("Value")
        if encoded:
            script = base64.b64decode(encoded).decode()
            if not script.startswith("#!"):  # launch templates: kiln encodes it once more
                script = base64.b64decode(script).decode()
            code, out, err = self._run(self._rewrite(script, root), root, 60.0)
            assert code == 0, f"user data of {iid} failed: {out}{err}"
        return root

    def _shims(self, root: Path) -> None:
        shims = root / ".standin"
        shims.mkdir(exist_ok=True)
        for name, text in (("systemctl", SYSTEMCTL), ("journalctl", JOURNALCTL),
                           ("aws", AWS_CLI), *self.tools.items()):
            path = shims / name
            path.write_text(text.replace("{root}", str(root)).replace("{python}",
                                                                      sys.executable))
            path.chmod(0o755)

    @staticmethod
    def _rewrite(script: str, root: Path) -> str:
        return (script.replace("/opt/kiln", f"{root}/opt/kiln").replace("/etc/", f"{root}/etc/")
                .replace("/tmp/kiln-", f"{root}/tmp/kiln-")
                .replace("export PATH=", f"export PATH={root}/.standin:"))

    def _run(self, script: str, root: Path, timeout: float) -> tuple[int, str, str]:
        (root / "etc" / "systemd" / "system").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        env = {**os.environ, "PATH": f"{root}/.standin:/usr/bin:/bin"}
        try:
            proc = subprocess.run(["/bin/sh", "-c", script], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 124, "", f"timed out after {timeout:g}s"
        return proc.returncode, proc.stdout, proc.stderr

    # ------------------------------------------------------------ cleanup

    def pids(self, iid: str) -> list[int]:
        run = self.roots.get(iid, self.folder / iid) / "run"
        return [int(p.read_text()) for p in run.glob("*.pid")] if run.is_dir() else []

    def alive(self, iid: str) -> bool:
        """Whether the instance's service process still runs."""
        for pid in self.pids(iid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rpartition(")")[2].split()[0] != "Z":  # a zombie is dead, just not reaped
                return True
        return False

    def reap(self) -> list[str]:
        """Kill the services of instances moto says are terminated; their ids."""
        gone = []
        for iid in list(self.roots):
            state = "terminated"
            with contextlib.suppress(ClientError):
                state = self._describe(iid)["State"]["Name"]
            if state in ("terminated", "shutting-down") and self.alive(iid):
                self._kill(iid)
                gone.append(iid)
        for iid in gone:
            wait_for(lambda iid=iid: not self.alive(iid), timeout=10,  # type: ignore[misc]
                     what=f"the stand-in of {iid} to die")
        return gone

    def stop(self, iid: str) -> None:
        """Stop the instance's service now (the stand-ins share this machine's ports, where
        real instances each have their own: a test instance of a later image cannot bind a
        port a fleet's stand-in holds)."""
        self._kill(iid)
        wait_for(lambda: not self.alive(iid), timeout=10, what=f"the stand-in of {iid} to stop")

    def _kill(self, iid: str) -> None:
        for pid in self.pids(iid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for iid in list(self.roots):
            self._kill(iid)
