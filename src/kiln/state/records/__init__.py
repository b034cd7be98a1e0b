"""The records layer: the only code with SQL besides `kiln.state.store` (the connection,
migrations and transactions). One module per table or concern (attestations, controller, events,
images, instances, journal, layers, lock, releases, rollouts, routes, steps, warmup); each
function is small and typed, takes a `Store` for reads (and writes of their own) or a `Tx` for
writes inside a caller's transaction. `tests/test_records_only_sql.py` fails when SQL appears
anywhere else under src/ (kiln/state/lock.py and controller.py included).
"""
