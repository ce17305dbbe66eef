"""`python -m preguard.console`: the web console as its own service."""

import asyncio

from preguard.console.service import ConsoleServer, ConsoleSettings
from preguard.runtime import Settings, configure_logging, connect, wait_for_stop


async def main() -> None:
    settings, console = Settings.from_env(), ConsoleSettings.from_env()
    configure_logging(settings.log_level)
    nc = await connect(settings, name="preguard-console")
    server = ConsoleServer(
        nc, settings.subjects, console.console_host, console.console_port, console.console_token,
        console.console_secure_cookie,
    )  # fmt: skip
    await server.start()
    try:
        await wait_for_stop()
    finally:
        await server.stop()
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
