"""The child: the one process that runs learner code. Values in; a value, or the exception raised, out.

Forked by the zygote (grader/sandbox/zygote.py) for one submission, it builds its walls (grader/sandbox/isolation.py),
says "ready" (the only frame that speaks for our side, sent before any learner code runs), then executes the
learner's source and answers calls on fd 3:

    grader -> child   {"op": "load", "source", "filename"}          run the learner's code once
    grader -> child   {"op": "call", "fn", "seq", "shared"} + args  call one learner function
    child -> grader   {"op": "model", "seq", "what", "name", "past"} + ids   a forward pass for the learner's code
    grader -> child   {"op": "model_reply", "ok", "shape", "handle"} + fd   its logits, in shared memory
    child -> grader   {"op": "result", "seq", "ok": true} + value
    child -> grader   {"op": "result", "seq", "ok": false, "raised": [qualified class names, MRO], "message"}
    child -> grader   {"op": "result", "seq", "ok": false, "problem": "..."}   no such function, unreadable value

No grader code runs here and nothing here decides a verdict: everything this process says is the learner's and is
decoded strictly by the grader (grader/sandbox/client.py). Its one claim beyond return values is which exception was
raised, named by qualified class name ("builtins.ValueError"), so a learner-defined look-alike class doesn't count.
Learner code can rewrite this module in its own process, but then it only chooses what it claims, which is what its
own functions could return or raise anyway. Models are proxies (grader/model_proxy.py); tokenizers are real (they hold
no weights) and were loaded by the zygote, so they are shared copy-on-write.
"""
from __future__ import annotations

import mmap
import os
import signal
import socket
import sys
import tempfile

from llmstudy.grader import codec
from llmstudy.grader.model_proxy import ModelProxy
from llmstudy.grader.sandbox import isolation
from llmstudy.grader.sandbox.protocol import ProtocolError, recv_frame, send_frame

CHANNEL_FD = 3


def main(config: dict, stage: str, sock_fd: int, out_fd: int) -> None:
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.dup2(sock_fd, CHANNEL_FD)
    os.closerange(CHANNEL_FD + 1, 65536)
    sock = socket.socket(fileno=CHANNEL_FD)
    limits = isolation.Limits(**config["limits"])
    try:
        os.setsid()
        if config["sandboxed"]:
            isolation.enter_sandbox(config["views"], stage, limits)
            os.chdir("/tmp")
        else:
            os.chdir(tempfile.mkdtemp(prefix="llmstudy-child-"))
        drop = os.geteuid() == 0 and (config["sandboxed"] or isolation.python_readable_by_others())
        isolation.restrict(limits, config["uid"] if drop else None, gpu=config["device"].startswith("cuda"))
        if sys.platform.startswith("linux"):
            isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)   # the zygote died: so does this child
    except OSError as exc:
        send_frame(sock, {"ready": False, "error": f"sandbox setup failed: {exc}"})
        return
    send_frame(sock, {"ready": True})     # before any learner code: later frames can't speak for our side
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=os.getcwd(), TMPDIR=os.getcwd(), LANG="C.UTF-8",
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      OMP_NUM_THREADS="1")
    channel = _Channel(sock, config["device"])
    _models_are_proxies(channel)
    _same_randomness()
    _serve(channel)


LEARNER_SEED = 0


def _same_randomness() -> None:
    """The global RNGs (torch, random, numpy) start from LEARNER_SEED in every child, before the learner's code runs.
    Code that draws without the generator it is given (a bug the graders catch) then gets the same verdict in every
    grading run; otherwise it would depend on the zygote's random start-up seed, which all its children share."""
    import random

    import torch
    random.seed(LEARNER_SEED)
    torch.manual_seed(LEARNER_SEED)          # CPU, and CUDA's generators whenever CUDA starts
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(LEARNER_SEED)


class _Channel:
    """fd 3, and the transport the learner's model proxies use while a call is in progress."""

    def __init__(self, sock: socket.socket, device: str):
        self.sock, self.device, self.seq = sock, device, None

    def forward(self, name: str, input_ids, past):
        if type(input_ids) is not __import__("torch").Tensor:
            raise TypeError(f"input_ids must be a torch.LongTensor [B, L], not {type(input_ids).__name__}")
        send_frame(self.sock, {"op": "model", "seq": self.seq, "what": "forward", "name": name, "past": past},
                   codec.encode(input_ids, where="input_ids"))
        header, _, fds = recv_frame(self.sock, max_fds=1)
        if not header.get("ok"):
            for fd in fds:
                os.close(fd)
            raise ValueError(str(header.get("message", "the model call failed")))
        import torch
        shape = [int(n) for n in header["shape"]]
        memory = mmap.mmap(fds[0], max(4 * _prod(shape), 1))
        os.close(fds[0])
        logits = torch.frombuffer(memory, dtype=torch.float32, count=_prod(shape)).view(shape) if _prod(shape) \
            else torch.empty(shape)
        if "rows" in header:             # identical rows crossed once: [U, L, V] -> [B, L, V], each row its own
            logits = logits[torch.tensor(header["rows"], dtype=torch.long)]
        return logits, int(header["handle"])

    def info(self, name: str) -> dict:
        send_frame(self.sock, {"op": "model", "seq": self.seq, "what": "info", "name": name, "past": None})
        header, blob, _ = recv_frame(self.sock)
        if not header.get("ok"):
            raise ValueError(str(header.get("message", "the model call failed")))
        return codec.decode(blob)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _models_are_proxies(channel: _Channel) -> None:
    """Every form of llmstudy.models.load(name[, device]) in the learner's code (a notebook's top-level
    `model, tok = load("smollm2")` included) gets a proxy and the real tokenizer, never weights."""
    import functools

    from llmstudy import models
    load_tokenizer = models.load_tokenizer

    @functools.cache
    def load_once(name: str):
        return ModelProxy(name, channel, channel.device), load_tokenizer(name)

    def load(name: str, device: str = "auto"):
        return load_once(name)

    models.load = load


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _serve(channel: _Channel) -> None:
    """Run the learner's code once, then answer calls until killed."""
    namespace: dict = {"__name__": "submission"}
    while True:
        try:
            request, blob, fds = recv_frame(channel.sock, max_fds=16)
        except (EOFError, OSError, ProtocolError):
            return
        channel.seq = seq = request.get("seq")
        out = b""
        try:
            if request.get("op") == "load":
                exec(compile(request["source"], request["filename"], "exec"), namespace)  # noqa: S102
                reply = {"op": "result", "seq": seq, "ok": True}
            else:
                target = namespace.get(request.get("fn"))
                if not callable(target):
                    reply = {"op": "result", "seq": seq, "ok": False, "problem": "missing"}
                else:
                    args, kwargs = _arguments(blob, request.get("shared") or [], fds, channel)
                    value = target(*args, **kwargs)
                    try:
                        out = codec.encode(value, where=f"the value returned by {request['fn']}()")
                        reply = {"op": "result", "seq": seq, "ok": True}
                    except codec.UnsupportedValue as exc:
                        reply = {"op": "result", "seq": seq, "ok": False, "problem": str(exc)[:500]}
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, MemoryError: all are answers
            reply = {"op": "result", "seq": seq, "ok": False,
                     "raised": [_qualname(c) for c in type(exc).__mro__][:32], "message": _first_line(exc)}
            out = b""
        try:
            send_frame(channel.sock, reply, out)
        except OSError:
            return


def _arguments(blob: bytes, shared: list, fds: list[int], channel: _Channel):
    """Decode a call's arguments; tensors named in `shared` become views of the grader's shared memory, so that the
    grader can see from its side whether the learner's function changed them in place."""
    import torch
    from llmstudy import models
    args, kwargs = codec.decode(blob, allow=codec.ARGUMENT_KINDS, device="cpu",
                                resolve_model=lambda name: ModelProxy(name, channel, channel.device),
                                resolve_tokenizer=models.load_tokenizer)
    if channel.device != "cpu":   # the learner's tensors follow the grader's model onto the GPU
        args, kwargs = codec.to_device((args, kwargs), channel.device)
    args = list(args)
    for name, fd in zip(shared, fds):
        position = int(name.split()[1]) - 1 if str(name).startswith("argument ") else None
        original = args[position] if position is not None else kwargs[name]
        memory = mmap.mmap(fd, max(original.numel() * original.element_size(), 1))
        os.close(fd)
        view = torch.frombuffer(memory, dtype=torch.uint8, count=original.numel() * original.element_size()) \
            .view(original.dtype).reshape(original.shape)
        if position is not None:
            args[position] = view
        else:
            kwargs[name] = view
    return args, kwargs
