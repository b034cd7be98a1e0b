"""`python -m app`: serve on $HOST:$PORT until SIGTERM/SIGINT, then finish in-flight requests."""

import sys

from app.server import serve

if __name__ == "__main__":
    sys.exit(serve())
