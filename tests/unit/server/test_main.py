"""The HTTP listening socket: accepted connections must have TCP_NODELAY.

Without it every HTTP response waited on Nagle and the peer's delayed ACK (about
40 ms a request from an async client). asyncio sets TCP_NODELAY on accepted
connections only when the listening socket's proto says TCP.
"""

from __future__ import annotations

import asyncio
import socket

from jaxinit_server.main import _bind_http


def test_accepted_connections_have_nodelay() -> None:
    async def main() -> int:
        sock = _bind_http("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted = transport.get_extra_info("socket")
                seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(main()) != 0
