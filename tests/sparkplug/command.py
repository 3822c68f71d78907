"""Sends a command as a Sparkplug host does, encoded by pysparkplug, for
tests/sparkplug.rs: an NCMD rebirth, or a DCMD writing one metric.

    command.py PORT rebirth GROUP NODE [COUNT]
    command.py PORT dcmd GROUP NODE DEVICE (name NAME | alias N) DATATYPE|- VALUE

DATATYPE is a pysparkplug DataType name (INT16, DOUBLE, ...); `-` sends
the metric without one (the node then reads it as its DBIRTH declared).
COUNT rebirths go out in one connection, as fast as the broker takes them.
"""

import sys

import pysparkplug as spb
from paho.mqtt import publish


def main():
    port, what, group, node = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    now = spb.get_current_timestamp()
    if what == "rebirth":
        topic = f"spBv1.0/{group}/NCMD/{node}"
        metric = spb.Metric(
            timestamp=now,
            name="Node Control/Rebirth",
            datatype=spb.DataType.BOOLEAN,
            value=True,
        )
        payload = spb.NCmd(timestamp=now, metrics=(metric,)).encode(include_dtypes=True)
        count = int(sys.argv[5]) if len(sys.argv) > 5 else 1
        if count > 1:
            messages = [{"topic": topic, "payload": payload, "qos": 0}] * count
            publish.multiple(messages, hostname="127.0.0.1", port=port)
            return
    else:
        device, by, key, dtype, value = sys.argv[5:10]
        topic = f"spBv1.0/{group}/DCMD/{node}/{device}"
        typed = dtype != "-"
        datatype = spb.DataType[dtype] if typed else spb.DataType.INT64
        metric = spb.Metric(
            timestamp=now,
            name=key if by == "name" else None,
            alias=int(key) if by == "alias" else None,
            datatype=datatype,
            value=float(value) if datatype in (spb.DataType.FLOAT, spb.DataType.DOUBLE) else int(value),
        )
        payload = spb.DCmd(timestamp=now, metrics=(metric,)).encode(include_dtypes=typed)
    publish.single(topic, payload, qos=0, hostname="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
