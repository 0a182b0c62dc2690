"""Message sizes on the wire between agents, gateways and servers.

gRPC refuses a received message over its limit (4 MiB by default) with
RESOURCE_EXHAUSTED, and an agent whose spooled batch is over it would resend that batch
for ever. So every sender bounds its batches by bytes as well as by count, well below
what every receiver accepts:

- ``BATCH_BYTES``: an agent's event batch (its spool read) and a gateway's upstream
  batch stop before this many bytes of events (a batch always holds at least one event;
  the server refuses one event over 256 KiB, counted, and stores the rest);
- ``MAX_MESSAGE_BYTES``: what servers and gateways accept in one message, and what a
  gateway sends at most.

``SERVER_OPTIONS``: the gRPC options of every port agents and gateways connect to (the
server's and the gateway's): keepalive pings every 20 s, pings from clients allowed
every 5 s (an agent pings every 10 s), and the message limit.
"""

from typing import Any

BATCH_BYTES = 4 << 20
MAX_MESSAGE_BYTES = 16 << 20
MAX_EVENT_BYTES = 256 << 10    # one event's JSON payload: larger ones are refused, acked

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
