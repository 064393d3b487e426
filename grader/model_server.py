"""Grader side: the only copy of a model that learner code may use, serving forward passes for its proxies.

    server = ModelServer("cpu")                       # one per submission (its prefix cache dies with it); the
                                                      # worker's ForwardMemo behind it is shared (memo=None: off)
    logits, handle = server.forward("smollm2", ids)   # ids LongTensor [B, L] -> logits float32 [B, L, V] (CPU)
    logits, handle = server.forward("smollm2", ids[:, -1:], past=handle)   # kv-cache style: [B, 1, V]

Learner code never holds weights (grader/model_proxy.py is what it gets); every call is checked here first, since the
request comes from a hostile process: token ids must be a LongTensor [B, L] of the vocabulary, a past handle must be
one this server gave out for a batch of the same size, and sizes are capped.

Prefix cache. A call whose ids extend an earlier call's ids (every row, same batch) computes only the new positions
on that call's KV cache; the logits of earlier positions come from the cache. So a naive loop, which feeds the whole
sequence at every step, costs what a KV-cache loop costs. A call that shares only part of a prefix branches from a
copy of the cache cropped to the shared part; anything else (edited ids, a new batch) is computed from scratch, so a
result never depends on guessing right. Cached and from-scratch logits differ by up to ~1e-4 (another summation
order; it varies by CPU): tests/test_model_proxy.py checks they stay inside the graders' tolerances (MIN_MARGIN 1e-3,
SUPPORT_TOL 1e-3).

Across submissions. Each forward pass is looked up first in the worker's ForwardMemo (grader/forward_memo.py) by its
whole computation path, so the greedy steps every correct submission asks for are computed once per worker, and a
memoised answer is bit for bit what this call would have computed itself.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from llmstudy.grader import forward_memo

SERVED = ("smollm2",)                 # causal LMs a learner's loop may call
MAX_ROWS = 512
MAX_POSITIONS = 1024                  # sequence length per row
MAX_LOGITS_BYTES = 768 << 20          # one answer: 128 rows x 30 positions x 49152 x 4 bytes fits
MAX_CACHED_BYTES = 1 << 30            # logits kept for prefix reuse, all entries together
MAX_ENTRIES = 8
MAX_HANDLES = 4096


class ModelRequestError(ValueError):
    """The learner's call to the model was malformed; the message says what to pass instead."""


@dataclass
class _Entry:
    ids: torch.Tensor                 # [B, L] on CPU
    cache: object                     # transformers DynamicCache holding L positions
    buffer: torch.Tensor              # [B, capacity >= L, V] float32 on CPU; positions [:L] hold the logits
    path: bytes                       # how `cache` was computed (forward_memo.chain), the memo's key
    borrowed: bool = False            # `cache` is the memo's own: copy it before growing it

    @property
    def logits(self) -> torch.Tensor:                                       # [B, L, V], a view
        return self.buffer[:, :self.ids.shape[1]]


def _appended(buffer: torch.Tensor | None, length: int, new: torch.Tensor) -> torch.Tensor:
    """buffer[:, :length] followed by new [B, l, V], in a buffer with room to grow: a naive loop extends its entry by
    one position a step, and copying every earlier position again each step would cost as much as serving them.
    The capacity doubles, so each position is copied O(1) times."""
    need = length + new.shape[1]
    if buffer is None or buffer.shape[1] < need:
        grown = torch.empty(new.shape[0], min(max(need, 2 * length, 16), MAX_POSITIONS), new.shape[2])
        if length:
            grown[:, :length] = buffer[:, :length]
        buffer = grown
    buffer[:, length:need] = new
    return buffer


@dataclass
class Stats:
    calls: int = 0                    # requests served
    runs: int = 0                     # forward passes of the model (requests served from the cache need none)
    memo_hits: int = 0                # forward passes an earlier submission on this worker had computed already
    positions_computed: int = 0       # token positions the model ran on (rows x new positions)
    positions_served: int = 0         # token positions whose logits were returned
    positions_memoised: int = 0       # token positions of memo hits (not in positions_computed)
    forward_seconds: float = 0.0      # serving, cache bookkeeping included
    model_seconds: float = 0.0        # the model's own forward passes only

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ModelServer:
    device: str = "cpu"
    stats: Stats = field(default_factory=Stats)
    memo: forward_memo.ForwardMemo | None = field(default_factory=lambda: forward_memo.PER_WORKER)   # None: off

    def __post_init__(self):
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._handles: OrderedDict[int, torch.Tensor] = OrderedDict()      # handle -> ids [B, L] it stands for
        self._next = 0

    def _model(self, name: str):
        if name not in SERVED:
            raise ModelRequestError(f"the model '{name}' can't be called during grading; only {', '.join(SERVED)}")
        from llmstudy import models
        return models.load(name, self.device)

    def info(self, name: str) -> dict:
        """The model's config as plain values (what `model.config` shows the learner)."""
        config = self._model(name)[0].config.to_dict()
        plain = (bool, int, float, str, type(None))
        return {k: v for k, v in config.items() if type(v) in plain
                or (type(v) is list and all(type(x) in plain for x in v) and len(v) < 64)}

    def forward(self, name: str, input_ids, past: int | None = None) -> tuple[torch.Tensor, int]:
        """logits float32 [B, L_in, V] on the CPU for the positions of input_ids, and a handle for the sequence so far
        ([B, L_past + L_in]). A returned tensor is the caller's own: later calls never change it."""
        unique, rows, handle = self.forward_rows(name, input_ids, past)
        return (unique if rows is None else unique[rows]), handle

    def forward_rows(self, name: str, input_ids, past: int | None = None, out=None) \
            -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """forward() with identical rows answered once: (logits [U, L_in, V] of the distinct rows, rows LongTensor
        [B] (row b's logits are logits[rows[b]]; None when no row repeats, and then U = B), handle). out(shape) -> an
        empty float32 tensor to write the logits into (default torch.empty): the sandbox client passes one over
        shared memory. A frequency test's 128 copies of one prompt then cross as one row, and the learner's process
        expands them itself (writing 100 MB into fresh shared memory costs ~0.1 s here, four times the expansion)."""
        import time
        model, _ = self._model(name)
        ids = self._check_ids(input_ids, model.config.vocab_size)
        if past is not None:
            if type(past) is not int or past not in self._handles:
                raise ModelRequestError("past_key_values is not one this model returned (or is too old); pass the "
                                        "past_key_values of your latest call")
            before = self._handles[past]
            if before.shape[0] != ids.shape[0]:
                raise ModelRequestError(f"input_ids has {ids.shape[0]} rows but past_key_values is for "
                                        f"{before.shape[0]}; keep the batch the same")
            full = torch.cat([before, ids], dim=1)
        else:
            full = ids
        if full.shape[1] > MAX_POSITIONS:
            raise ModelRequestError(f"sequences longer than {MAX_POSITIONS} tokens are not served during grading")
        if ids.numel() * model.config.vocab_size * 4 > MAX_LOGITS_BYTES:
            raise ModelRequestError(f"a call for {ids.shape[0]} x {ids.shape[1]} positions returns over "
                                    f"{MAX_LOGITS_BYTES >> 20} MB of logits; call the model on fewer rows")
        start = time.perf_counter()
        unique, inverse = torch.unique(full, dim=0, return_inverse=True)   # [U, L_full], [B]
        repeated = unique.shape[0] < full.shape[0]
        logits = self._logits(name, model, unique if repeated else full)   # [U, L_full, V], the cache's own
        served = logits[:, full.shape[1] - ids.shape[1]:]                   # [U, L_in, V]
        result = (out or torch.empty)(tuple(served.shape))
        with torch.no_grad():
            result.copy_(served)
        self.stats.forward_seconds += time.perf_counter() - start
        self.stats.calls += 1
        self.stats.positions_served += ids.numel()
        return result, (inverse if repeated else None), self._handle(full)

    def logits(self, name: str, input_ids) -> torch.Tensor:
        """The grader's own use: logits [B, L, V] for ids, from the same cache the learner's calls filled."""
        return self.forward(name, input_ids)[0]

    def _check_ids(self, input_ids, vocab: int) -> torch.Tensor:
        if type(input_ids) is not torch.Tensor:
            raise ModelRequestError(f"input_ids must be a torch.LongTensor [B, L], not {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ModelRequestError(f"input_ids must hold token ids (torch.long), not {input_ids.dtype}")
        if input_ids.dim() != 2 or not (1 <= input_ids.shape[0] <= MAX_ROWS) or input_ids.shape[1] < 1:
            raise ModelRequestError(f"input_ids must have shape [B, L] with B >= 1 and L >= 1, not "
                                    f"{list(input_ids.shape)}; add a batch dimension with ids[None, :]")
        ids = input_ids.to("cpu", torch.long)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ModelRequestError(f"input_ids holds ids outside the vocabulary [0, {vocab})")
        return ids

    def _handle(self, ids: torch.Tensor) -> int:
        self._next += 1
        self._handles[self._next] = ids
        while len(self._handles) > MAX_HANDLES:
            self._handles.popitem(last=False)
        return self._next

    def _logits(self, name: str, model, full: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, V] for every position of `full`, reusing the entry with the longest common prefix."""
        best, shared = None, 0
        for key, entry in self._entries.items():
            if entry.ids.shape[0] != full.shape[0]:
                continue
            n = min(entry.ids.shape[1], full.shape[1])
            same = (entry.ids[:, :n] == full[:, :n]).all(dim=0).long().cumprod(0)   # [n]: prefix still equal
            m = int(same.sum())
            if m > shared:
                best, shared = key, m
        L = full.shape[1]
        if best is not None and shared == L:                               # full is a prefix of an entry
            self._entries.move_to_end(best)
            return self._entries[best].logits[:, :L]
        cache, buffer, start = None, None, 0
        if best is None:
            path = forward_memo.ForwardMemo.origin(name, self.device)
        else:
            entry = self._entries[best]
            if shared == entry.ids.shape[1]:                               # extends the entry: grow it in place
                cache, buffer, path = entry.cache, entry.buffer, entry.path
                if entry.borrowed:
                    cache = forward_memo.detached(cache)
                del self._entries[best]
            else:                                                          # branches: from a cropped copy
                cache = forward_memo.detached(entry.cache)
                cache.crop(shared - entry.ids.shape[1])        # transformers 5: negative = drop that many
                buffer = _appended(None, 0, entry.logits[:, :shared])
                path = forward_memo.chain(entry.path, "crop", shared)
            start = shared
        path = forward_memo.chain(path, full[:, start:])
        new, cache, borrowed = self._run(model, full[:, start:], cache, path)
        entry = _Entry(full, cache, _appended(buffer, start, new), path, borrowed)
        self._store(entry)
        return entry.logits

    def _run(self, model, ids: torch.Tensor, cache, path: bytes) -> tuple[torch.Tensor, object, bool]:
        """Logits [B, l, V] for ids [B, l] run on `cache`, the grown cache, and whether that is the memo's (not to be
        grown in place); `path` names the result."""
        import time
        if self.memo is not None and (known := self.memo.get(path)) is not None:
            self.stats.memo_hits += 1
            self.stats.positions_memoised += ids.numel()
            return (*known, True)
        start = time.perf_counter()
        with torch.no_grad():
            out = model(ids.to(self.device), cache=cache, use_cache=True)   # transformers 5: `cache`
        self.stats.model_seconds += time.perf_counter() - start
        self.stats.positions_computed += ids.numel()
        self.stats.runs += 1
        logits = out.logits.float().cpu()                                   # [B, l, V]
        if self.memo is not None:
            self.memo.put(path, logits, out.past_key_values)
        return logits, out.past_key_values, False

    def _store(self, entry: _Entry) -> None:
        key = self._handle_key()
        self._entries[key] = entry
        while len(self._entries) > MAX_ENTRIES or \
                sum(e.buffer.numel() * 4 for e in self._entries.values()) > MAX_CACHED_BYTES:
            if len(self._entries) == 1:
                break
            self._entries.popitem(last=False)

    def _handle_key(self) -> int:
        self._next += 1
        return self._next
