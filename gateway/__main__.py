"""`python -m gateway`: the Python edge on LLMMESH_EDGE_PORT (8080), until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from gateway.app import EdgeServer
from gateway.config import EdgeConfig
from gateway.spec import LLMMESH_SPEC
from services.runtime.logs import configure_logging


async def serve(config: EdgeConfig) -> None:
    server = EdgeServer(config, LLMMESH_SPEC)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[None] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stopping.done() or stopping.set_result(None))
    try:
        await stopping
    finally:
        await server.stop()


def main() -> None:
    config = EdgeConfig.from_env()
    configure_logging("edge", config.runtime.log_level)
    asyncio.run(serve(config))


main()
