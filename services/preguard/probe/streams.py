"""The JetStream streams the probe relies on, created when missing (whoever starts first)."""

from __future__ import annotations

import structlog
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from preguard.proto import Subjects

log = structlog.get_logger()
_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """The retained-bundle and events streams, created when missing (idempotent, either service first)."""
    configs = [
        StreamConfig(
            name=subjects.stream_bundles(),
            subjects=[subjects.policy_all()],
            max_msgs_per_subject=1,
            storage=StorageType.FILE,
            allow_direct=True,  # a probe may read only its own host's bundle: a direct get by subject
        ),
        StreamConfig(
            name=subjects.stream_events(),
            subjects=[subjects.events_all()],
            max_age=24 * 3600,
            max_bytes=1 << 30,
            storage=StorageType.FILE,
        ),
    ]
    for config in configs:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
            log.info("stream_kept", stream=config.name, reason="exists with another configuration")
