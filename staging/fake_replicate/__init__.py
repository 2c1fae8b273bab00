"""A fake Replicate HTTP API for offline staging and tests, driven by the real `replicate` client.

Serves any model by its published input schema (the product's, a folder's, or one posted to
/_fake/schemas) at GET /v1/models/{owner}/{name} in the real shape, validates inputs against it, runs
predictions through starting, processing and succeeded, renders outputs with the size, frame rate and length
the real model would deliver, and injects scripted faults. See `server.FakeReplicateServer` (tests) and
`server.serve` (the CLI).
"""

from staging.fake_replicate.faults import Fault
from staging.fake_replicate.server import FakeReplicateServer, serve

__all__ = ["FakeReplicateServer", "Fault", "serve"]
