"""Worker processes on 127.0.0.1 for the multi-worker tests and benchmarks: free ports and the TF_CONFIG of one worker
(plain Python: a job imports it before TensorFlow).

Usage:
    ports = free_ports(2)                  # "40123,40125"
    num_workers = set_tf_config(ports, 0)  # in worker 0's process, before its strategy is made
"""
import json
import os
import socket


def free_ports(count):
    """`count` TCP ports of 127.0.0.1 free right now, comma-separated."""
    sockets = [socket.socket() for _ in range(count)]
    for ss in sockets:
        ss.bind(("127.0.0.1", 0))
    ports = [ss.getsockname()[1] for ss in sockets]
    for ss in sockets:
        ss.close()
    return ",".join(str(port) for port in ports)


def set_tf_config(ports, index):
    """TF_CONFIG of worker `index` of one worker per port of `ports` ("p0,p1") on 127.0.0.1; returns the worker count."""
    workers = ["127.0.0.1:{}".format(port) for port in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
    return len(workers)
