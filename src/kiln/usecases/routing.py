"""Starting the project's router, also when the spec switched routers (Traefik <-> HAProxy)."""

from __future__ import annotations

from kiln.context import Context
from kiln.platforms.capabilities import RouterSwitch
from kiln.rollout.executor import load_release
from kiln.state.records import routes as route_records


def start_router(project: Context) -> None:
    """Start the spec's router if it does not run (with its routing).

    After a switch of `router:` the other kind still serves, and the new one's files hold
    the routing of when it last ran, if it ever did. Each service the state routes is then
    routed again from the state, as a restart would serve it: the first one starts the new
    router (stopping the old one, which holds the addresses), and none is served stale."""
    router = project.router
    if isinstance(router, RouterSwitch) and router.serving_instead() is not None:
        from kiln.rollout.heal import route  # only on a switch: not on every deploy's start-up

        weights: dict[str, dict[str, int]] = {}
        for row in route_records.all_weights(project.store):
            weights.setdefault(str(row["service"]), {})[str(row["release_id"])] = int(
                row["weight"])
        for name, routes in sorted(weights.items()):
            # The release with the most traffic is the one whose recorded spec (listen,
            # health) the service is routed by, as a rollout's own routing does.
            release = load_release(project.store, max(routes, key=lambda r: (routes[r], r)))
            route(project.rollout_env(name, release.spec), name, release)
    router.ensure_running()
