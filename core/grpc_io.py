"""gRPC's socket I/O for our processes, set before grpc is imported (grpcio reads
GRPC_EXPERIMENTS once, at import): every entry point imports this module first.

grpcio 1.85 moves a message through its EventEngine: a poller thread wakes a
worker thread that reads the socket, which wakes the completion-queue thread,
which wakes the asyncio loop. On a busy core every hop is a context switch. With
the EventEngine's endpoints off, gRPC's older I/O manager lets the
completion-queue thread poll and read by itself: one hop to the loop. Measured
on this project's 2-core VM, three alternating runs each:
- grpc.aio on uvloop, client and server on one core: a message on an open stream
  125-130 -> 85-105 us of CPU on each side, 265-285 -> 185-220 us round trip;
- the gateway pinned to one core (bench mock, 16 connections): JSON 516-624 ->
  537-903 req/s, 20-chunk streams 298-346 -> 365-480 req/s; time to first token
  on the paced mock +2.42 -> +2.11 ms over direct.
An operator's own GRPC_EXPERIMENTS is kept as it is ("" for grpcio's default).
"""

import os

LEGACY_IO = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"

os.environ.setdefault("GRPC_EXPERIMENTS", LEGACY_IO)
