"""`escape-py` (hostile): the Python twin of `escape`. Tries to read host files, list the
root folder, read the environment and open a network connection, and reports what it got.
With no grants, every attempt must fail or come back empty; clocks and randomness work."""

import os
import random
import socket
import time

import weir


def attempt(action):
    try:
        return {"ok": action()}
    except Exception as exc:  # the report is the point: every failure is an answer
        return {"error": f"{type(exc).__name__}: {exc}"}


def read(path):
    with open(path) as f:
        return f.read()


def connect():
    with socket.create_connection(("127.0.0.1", 22), timeout=1):
        return "connected"


@weir.processor(name="escape-py", version="0.1.0", description="Tries to leave the sandbox.")
def process(state, ctx):
    return {
        "files": {path: attempt(lambda p=path: read(p)) for path in ["/etc/passwd", "app.py", "escape-py.wasm"]},
        "rootListing": attempt(lambda: os.listdir("/")),
        "env": dict(os.environ),
        "network": attempt(connect),
        "clock": time.time() > 1_600_000_000,
        "random": 0 <= random.random() < 1,
    }


Handler = weir.Handler
