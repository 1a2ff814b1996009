"""A netem stand-in (this kernel has no sch_netem): hold each packet of an NFQUEUE for a set
time and drop a share of them.

    python tests/nfqdelay.py QUEUE DELAY_MS LOSS_PCT

Run inside a network namespace whose nftables rules send packets to ``queue num QUEUE``;
prints ``nfqdelay ready`` once bound, and runs until SIGTERM.
"""

from __future__ import annotations

import heapq
import random
import select
import signal
import sys
import time
from typing import Any

from netfilterqueue import NetfilterQueue


def main(queue: int, delay_s: float, loss: float) -> None:
    held: list[tuple[float, int, Any]] = []  # (due, sequence, packet)
    seq = 0

    def on_packet(pkt: Any) -> None:
        nonlocal seq
        if random.random() < loss:
            pkt.drop()
            return
        pkt.retain()  # keep its payload after the callback returns
        seq += 1
        heapq.heappush(held, (time.monotonic() + delay_s, seq, pkt))

    nfq = NetfilterQueue()
    nfq.bind(queue, on_packet, max_len=65536)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd = nfq.get_fd()
    print("nfqdelay ready", flush=True)
    try:
        while True:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
            if select.select([fd], [], [], timeout)[0]:
                nfq.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
    finally:
        for _, _, pkt in held:  # release what is held rather than lose it on exit
            pkt.accept()
        nfq.unbind()


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3]) / 100)
