import json
import os
import struct

import torch

_calls = []


def _frame(header, blob=b""):
    data = json.dumps(header).encode()
    return struct.pack("<IQ", len(data), len(blob)) + data + blob


def positional_encoding(seq_len, d_model, base=10000.0):
    """Writes something forged or malformed into the channel (fd 3) on each call, then returns zeros."""
    _calls.append(1)
    forged = [
        _frame({"op": "result", "seq": 10 ** 9, "ok": True}),                      # an answer out of order
        _frame({"op": "result", "seq": None, "ok": True, "raised": "x" * 10 ** 5}),
        b"\xff" * 64,                                                               # not a frame
        struct.pack("<IQ", 1 << 30, 1 << 40),                                       # sizes over the limit
        _frame({"op": "model", "seq": None, "what": "forward", "name": "../../etc/passwd", "past": "x"}),
        _frame([1, 2, 3]),                                                          # JSON, not an object
        _frame({"op": "result", "ok": True}, b"\x00" * 8 + b"not a value"),
    ]
    os.write(3, forged[len(_calls) % len(forged)])
    return torch.zeros(seq_len, d_model)
