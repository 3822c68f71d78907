"""Decodes captured Sparkplug B messages with pysparkplug, a host library
that is not fieldgate's, for tests/sparkplug.rs.

stdin: one JSON object per line, {"topic": ..., "payload": "<hex>"}, in
the order the subscriber received them. stdout: one JSON object per line,
the message as pysparkplug reads it. A message it cannot decode ends the
run with a non-zero exit and the reason on stderr.
"""

import json
import sys

import pysparkplug as spb


def metric(m):
    value = m.value
    if isinstance(value, bytes):
        value = value.hex()
    return {
        "name": m.name,
        "alias": m.alias,
        "datatype": m.datatype.name,
        "value": value,
        "timestamp": m.timestamp,
        "is_null": m.is_null,
        "is_historical": m.is_historical,
    }


def main():
    births = {}
    for n, line in enumerate(sys.stdin, 1):
        captured = json.loads(line)
        topic = spb.Topic.from_str(captured["topic"])
        raw = bytes.fromhex(captured["payload"])
        kind = topic.message_type
        key = (topic.group_id, topic.edge_node_id, topic.device_id)
        try:
            payload = kind.payload.decode(raw, birth=births.get(key))
        except Exception as e:  # noqa: BLE001 - reported with its message
            sys.exit(f"message {n} on {captured['topic']}: {type(e).__name__}: {e}")
        if kind in (spb.MessageType.NBIRTH, spb.MessageType.DBIRTH):
            births[key] = payload
        out = {
            "type": kind.name,
            "group": topic.group_id,
            "node": topic.edge_node_id,
            "device": topic.device_id,
        }
        if kind == spb.MessageType.NDEATH:
            out["timestamp"] = payload.timestamp
            out["metrics"] = [metric(payload.bd_seq_metric)]
        else:
            out["timestamp"] = payload.timestamp
            out["seq"] = getattr(payload, "seq", None)
            out["metrics"] = [metric(m) for m in getattr(payload, "metrics", ())]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
