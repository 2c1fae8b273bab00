"""A fake Replicate HTTP API for offline staging and tests, driven by the real `replicate` client.

Validates inputs against the models' published schemas, runs predictions through starting, processing and
succeeded, renders outputs with the size, frame rate and length the real model would deliver, and injects
scripted faults. See `server.FakeReplicateServer` (tests) and `server.serve` (the CLI).
"""

from staging.fake_replicate.faults import Fault
from staging.fake_replicate.server import FakeReplicateServer, serve

__all__ = ["FakeReplicateServer", "Fault", "serve"]
