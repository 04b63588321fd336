"""Send tasks and wait for their results.

Start a worker first, in this folder: celeriac -A tasks worker -c 2 -Q emails,default
"""

from __future__ import annotations

import asyncio

from tasks import app, send_receipt, send_welcome


def main() -> None:
    """Send one task with delay(), one with options, and read both results."""
    welcome = send_welcome.delay(42)
    receipt = send_receipt.apply_async((1001,), {"copy_to_accounting": True}, priority=9)
    print(welcome.get(timeout=10))
    print(receipt.get(timeout=10))
    print("state:", app.AsyncResult(welcome.id).state)


async def amain() -> None:
    """The same from asyncio code."""
    result = await send_welcome.adelay(7)
    print(await result.aget(timeout=10))


if __name__ == "__main__":
    main()
    asyncio.run(amain())
