"""Reads an MCAP recording with the `mcap` package (an independent reader, not alignsam's) and
prints one JSON object: per topic the schema name and encoding, the message count and whether
log times are non-decreasing; `complete` is false when the file ends early (a crash), with the
messages read before the damage counted."""
import json
import sys

from mcap.reader import NonSeekingReader

topics = {}
complete = True
error = None
with open(sys.argv[1], "rb") as f:
    # Streamed from the start (no index needed): a file cut off by a crash has no footer.
    reader = NonSeekingReader(f)
    try:
        for schema, channel, message in reader.iter_messages(log_time_order=False):
            t = topics.setdefault(
                channel.topic,
                {
                    "schema": schema.name if schema else None,
                    "schema_encoding": schema.encoding if schema else None,
                    "message_encoding": channel.message_encoding,
                    "count": 0,
                    "monotonic": True,
                    "last": 0,
                    "first_keys": sorted(json.loads(message.data).keys()),
                },
            )
            if message.log_time < t["last"]:
                t["monotonic"] = False
            t["last"] = message.log_time
            t["count"] += 1
    except Exception as e:  # a truncated file: what came before is what counts
        complete = False
        error = f"{type(e).__name__}: {e}"
print(json.dumps({"topics": topics, "complete": complete, "error": error}))
