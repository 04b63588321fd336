"""Many sends at once and what a result handle tells: map, starmap and chunks; a
signature's clone; successful(), summary() and forget(); aapply_async() from asyncio.

Start a worker first, in this folder: celeriac -A tasks worker -c 2 -Q emails,default
Then:                                 python results.py
"""

from __future__ import annotations

import asyncio

from tasks import send_receipt, send_welcome

from celeriac import group


def main() -> None:
    """Send groups of tasks three ways, one task from a signature, and read the results."""
    # task.map(items): one task per item, as a group; apply_async() sends it in one round
    # trip and returns a GroupResult.
    welcomes = send_welcome.map([1, 2, 3]).apply_async()
    print(welcomes.get(timeout=10))
    # successful(): every member succeeded. summary(): the group as one record, the way
    # `celeriac result GROUP_ID` shows it (state SUCCESS, FAILURE or PENDING).
    print("all sent:", welcomes.successful(), welcomes.summary().state)

    # task.starmap(argument lists): one task per list, its items the positional arguments.
    receipts = send_receipt.starmap([(1001,), (1002, True)]).apply_async()
    print(receipts.get(timeout=10))

    # task.chunks(argument lists, n): n calls per message, for many tiny calls; each
    # chunk's result is the list of its calls' results.
    print(send_welcome.chunks([(u,) for u in range(4, 8)], 2).apply_async().get(timeout=10))

    # signature.clone(args, kwargs, **options): a copy with arguments added and options set;
    # the original is left as it was, to be cloned again.
    receipt = send_receipt.s().set(priority=5)
    copy = receipt.clone((1003,), {"copy_to_accounting": True}, priority=9)
    result = copy.delay()
    print(result.get(timeout=10), "| succeeded:", result.successful())
    # forget(): delete the stored result once it has been read; the id then reads PENDING
    # (nothing stored), as a task that has not run yet would.
    result.forget()
    print("after forget():", result.state)


async def amain() -> None:
    """apply_async() with options, and a group, from asyncio code."""
    result = await send_welcome.aapply_async((8,), priority=9)
    print(await result.aget(timeout=10))
    both = await group(send_welcome.s(9), send_welcome.s(10)).aapply_async()
    print(await both.aget(timeout=10))


if __name__ == "__main__":
    main()
    asyncio.run(amain())
