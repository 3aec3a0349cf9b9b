"""Baseline: a bare aiocoap server that answers every POST under /up with 2.04, doing nothing.

Usage: ``python -m bench.coap_bare PORT`` (prints READY once listening).
"""

from __future__ import annotations

import asyncio
import sys

import aiocoap
from aiocoap import resource


class Uplinks(resource.Resource, resource.PathCapable):  # type: ignore[misc]
    """Every path below /up: 2.04 Changed at once."""

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer without looking at the request."""
        return aiocoap.Message(code=aiocoap.CHANGED)


async def main(port: int) -> None:
    """Serve until killed."""
    root = resource.Site()
    root.add_resource(["up"], Uplinks())
    await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", port))
    print("READY", flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
