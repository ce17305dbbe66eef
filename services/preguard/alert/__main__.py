"""`python -m preguard.alert`: one alert service instance (PREGUARD_* and PREGUARD_ALERT_* settings)."""

import asyncio

from preguard.alert.service import AlertService
from preguard.alert.settings import AlertSettings
from preguard.runtime import Settings, configure_logging, connect, wait_for_stop


async def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    nc = await connect(settings, name="preguard-alert")
    service = AlertService(nc, settings.subjects, AlertSettings.from_env())
    await service.start()
    try:
        await wait_for_stop()
    finally:
        await service.stop()
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
