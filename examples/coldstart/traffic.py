"""Steady traffic for trying the example: 60 GETs a second to the service's listen address
for 3 minutes (loopback only, bounded), then a one-line summary."""

from kiln.testing.load import Load

if __name__ == "__main__":
    with Load("127.0.0.1:8090", rate=60, max_seconds=180, workers=4) as load:
        stats = load.wait()
    print(stats.summary())
