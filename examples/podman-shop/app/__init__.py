"""The kiln demo shop: a stdlib HTTP app whose version and faults come from behaviour.json."""

from app.server import Behaviour, make_server, serve

__all__ = ["Behaviour", "make_server", "serve"]
