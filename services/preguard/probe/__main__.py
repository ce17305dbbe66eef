"""`python -m preguard.probe` (and `preguard probe`): one probe for the local Docker engine."""

from __future__ import annotations

import asyncio

import aiodocker

from preguard.probe import Probe, ProbeSettings
from preguard.runtime import Settings, configure_logging, connect, wait_for_stop


async def main() -> None:
    settings, probe_settings = Settings.from_env(), ProbeSettings.from_env()
    configure_logging(settings.log_level)
    nc = await connect(settings, name=f"preguard-probe-{settings.host}")
    docker = aiodocker.Docker(url=probe_settings.docker_url)
    probe = Probe(nc, docker, settings.subjects, probe_settings)
    await probe.start()
    try:
        await wait_for_stop()
    finally:
        await probe.stop()
        await docker.close()
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
