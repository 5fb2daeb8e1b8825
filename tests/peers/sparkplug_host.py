"""A Sparkplug B host application for Kite's end-to-end tests.

usage: sparkplug_host.py PORT GROUP [HOST_ID]

Subscribes to `spBv1.0/GROUP/#` on the broker at 127.0.0.1:PORT and decodes
every message with pysparkplug 0.6.1 (an implementation of Sparkplug B
independent of Kite's), resolving aliases and datatypes from the births it
has seen, as a host application does. The `Quality` property of each
metric is read with pysparkplug's own protobuf module.

stdout, one JSON object per line:
  {"type": "ready"} once subscribed;
  every message: {"type", "node", "device", "seq", "timestamp", "bdSeq",
  "metrics": [{"name", "alias", "datatype", "value", "historical", "null",
  "quality", "timestamp"}]}; an NDEATH whose bdSeq is not that of the
  node's current birth has "stale": true (a host ignores it);
  {"type": "violation", "what": ...} for every rule of the session broken:
  a message of a node or device not born, a seq out of order, an NBIRTH
  whose seq is not 0, a payload that does not decode.

stdin, one JSON command per line:
  {"state": true|false}: publishes this host's STATE (retained, Sparkplug 3.0);
  {"rebirth": NODE}: an NCMD asking NODE for a rebirth;
  {"dcmd": {"node", "device", "metrics": [{"name"|"alias", "datatype", "value"}]}}.
"""

import json
import sys
import threading
import time

import paho.mqtt.client as paho
import pysparkplug as spb
from pysparkplug._protobuf import Payload as PbPayload

PORT = int(sys.argv[1])
GROUP = sys.argv[2]
HOST_ID = sys.argv[3] if len(sys.argv) > 3 else None

out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def now_ms():
    return int(time.time() * 1000)


# Per node: {"bdSeq", "next_seq", "born": set of devices, "alive"}
nodes = {}
# pysparkplug births, by (node, device), for aliases and datatypes.
births = {}


def quality_of(pb_metric):
    props = pb_metric.properties
    for key, value in zip(props.keys, props.values):
        if key == "Quality":
            return value.int_value
    return None


def check_seq(node, state, seq, kind):
    if seq is None:
        emit({"type": "violation", "what": f"{kind} of {node} without seq"})
        return
    if state["next_seq"] is not None and seq != state["next_seq"]:
        emit({"type": "violation",
              "what": f"{kind} of {node}: seq {seq}, expected {state['next_seq']}"})
    state["next_seq"] = (seq + 1) % 256


def on_message(_client, _userdata, msg):
    try:
        handle(msg)
    except Exception as error:  # a message that does not decode is a finding
        emit({"type": "violation", "what": f"{msg.topic}: {error!r}"})


def handle(msg):
    topic = spb.Topic.from_str(msg.topic)
    kind = str(topic.message_type)
    if kind in ("STATE", "NCMD", "DCMD"):
        return
    node, device = topic.edge_node_id, topic.device_id
    key = (node, device)
    message = spb.Message.from_mqtt_message(msg, birth=births.get(key))
    payload = message.payload
    raw = PbPayload.FromString(msg.payload)
    state = nodes.setdefault(node, {"bdSeq": None, "next_seq": None, "born": set(), "alive": False})
    record = {"type": kind, "node": node, "device": device,
              "seq": getattr(payload, "seq", None), "timestamp": payload.timestamp}
    decoded = getattr(payload, "metrics", None)
    if decoded is None:
        decoded = (payload.bd_seq_metric,) if kind == "NDEATH" else ()
    metrics = []
    for metric, pb_metric in zip(decoded, raw.metrics):
        metrics.append({
            "name": metric.name, "alias": metric.alias,
            "datatype": metric.datatype.name, "value": metric.value,
            "historical": metric.is_historical, "null": metric.is_null,
            "quality": quality_of(pb_metric), "timestamp": metric.timestamp,
        })
    record["metrics"] = metrics
    if kind == "NBIRTH":
        bd_seq = next(m["value"] for m in metrics if m["name"] == "bdSeq")
        record["bdSeq"] = bd_seq
        if record["seq"] != 0:
            emit({"type": "violation", "what": f"NBIRTH of {node} with seq {record['seq']}"})
        state.update(bdSeq=bd_seq, next_seq=1, born=set(), alive=True)
        births[key] = payload
        for k in [k for k in births if k[0] == node and k[1] is not None]:
            del births[k]
    elif kind == "NDEATH":
        bd_seq = next(m["value"] for m in metrics if m["name"] == "bdSeq")
        record["bdSeq"] = bd_seq
        if bd_seq != state["bdSeq"]:
            record["stale"] = True
        else:
            state["alive"] = False
            state["born"] = set()
    else:
        if not state["alive"]:
            emit({"type": "violation", "what": f"{kind} of {node}/{device} while the node is not born"})
        check_seq(node, state, record["seq"], kind)
        if kind == "DBIRTH":
            state["born"].add(device)
            births[key] = payload
        elif device not in state["born"]:
            emit({"type": "violation", "what": f"{kind} of {device} before its DBIRTH"})
        if kind == "DDEATH":
            state["born"].discard(device)
    emit(record)


def on_connect(client, _userdata, _flags, rc):
    if rc != 0:
        emit({"type": "violation", "what": f"connect refused: {rc}"})
        return
    client.subscribe(f"spBv1.0/{GROUP}/#", qos=1)


def on_subscribe(_client, _userdata, _mid, _granted):
    emit({"type": "ready"})


def publish_state(client, online):
    client.publish(f"spBv1.0/STATE/{HOST_ID}",
                   json.dumps({"online": online, "timestamp": now_ms()}),
                   qos=1, retain=True).wait_for_publish()


def command(client, line):
    cmd = json.loads(line)
    if "state" in cmd:
        publish_state(client, cmd["state"])
    elif "rebirth" in cmd:
        ncmd = spb.NCmd(timestamp=now_ms(), metrics=(spb.Metric(
            timestamp=now_ms(), name="Node Control/Rebirth",
            datatype=spb.DataType.BOOLEAN, value=True),))
        client.publish(f"spBv1.0/{GROUP}/NCMD/{cmd['rebirth']}",
                       ncmd.encode(include_dtypes=True), qos=0)
    elif "dcmd" in cmd:
        dcmd = cmd["dcmd"]
        metrics = tuple(spb.Metric(
            timestamp=now_ms(), name=m.get("name"), alias=m.get("alias"),
            datatype=spb.DataType[m["datatype"]], value=m["value"])
            for m in dcmd["metrics"])
        payload = spb.DCmd(timestamp=now_ms(), metrics=metrics)
        client.publish(f"spBv1.0/{GROUP}/DCMD/{dcmd['node']}/{dcmd['device']}",
                       payload.encode(include_dtypes=True), qos=0)


def main():
    client = paho.Client(client_id=f"sparkplug-host-{PORT}", clean_session=True)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if HOST_ID is not None:
        client.will_set(f"spBv1.0/STATE/{HOST_ID}",
                        json.dumps({"online": False, "timestamp": now_ms()}),
                        qos=1, retain=True)
    client.connect("127.0.0.1", PORT, keepalive=30)
    client.loop_start()
    for line in sys.stdin:
        if line.strip():
            command(client, line)
    client.loop_stop()


if __name__ == "__main__":
    main()
