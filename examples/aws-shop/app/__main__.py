"""The shop: answers with the greeting Puppet wrote into conf/shop.conf at bake time, and shows
the feature flags Ansible wrote into conf/features.conf."""

import http.server
import os
from pathlib import Path

CONF = Path(__file__).resolve().parent.parent / "conf"


def features() -> str:
    path = CONF / "features.conf"
    return path.read_text() if path.is_file() else ""


def greeting() -> str:
    conf = CONF / "shop.conf"
    for line in conf.read_text().splitlines():
        if line.startswith("greeting="):
            return line.partition("=")[2]
    return "no greeting configured"


class Shop(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path in ("/", "/healthz", "/features")
        body = (greeting() if self.path == "/" else features() if self.path == "/features"
                else "ok" if ok else "not found").encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    print(f"shop on {os.environ['PORT']} (database password set: "
          f"{bool(os.environ.get('DB_PASSWORD'))})", flush=True)
    http.server.ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), int(os.environ["PORT"])),
                                    Shop).serve_forever()
