"""`python -m preguard.policy`: the policy service, until SIGINT or SIGTERM."""

import asyncio
import os

from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.runtime import Settings, configure_logging, connect, wait_for_stop


async def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    nc = await connect(settings, "preguard-policy")
    replicas = int(os.environ.get("PREGUARD_POLICY_REPLICAS", "1"))  # KV replicas in a cluster
    store = await PolicyStore.open(nc.jetstream(), settings.subjects.kv_policies(), replicas=replicas)
    service = PolicyService(nc, store, settings.subjects)
    await service.start()
    try:
        await wait_for_stop()
    finally:
        await service.stop()
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
