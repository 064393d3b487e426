"""Grader side: forward passes computed once per worker, shared by every submission it grades, bit for bit.

    memo = ForwardMemo(max_bytes=256 << 20)
    origin = memo.origin("smollm2", "cpu")                 # the path of an empty KV cache
    key = chain(origin, chunk)                             # the path after computing `chunk` [B, l] on it
    memo.put(key, logits, cache)                           # logits [B, l, V] and the KV cache after them
    logits, cache = memo.get(key)                          # the memo's own: read them, copy before growing the cache
    memo.save(path, memo.keys()); other.load(path)         # to disk and back, byte for byte (reference_cache.warm_memo)

Thirty correct submissions of the generation exercise ask the model for exactly the same greedy steps: a naive loop
and a KV-cache loop reach the model server as the same sequence of one-position extensions (grader/model_server.py).
ModelServer computes each step once per worker and serves later submissions from here.

Why this can't change a score, not even by 1e-5: a cached forward pass and a fresh one differ slightly (another
summation order), so a result must never depend on *which* earlier call filled the cache. The key is therefore the
whole computation path, not the token ids: a hash chain over the model, the device, the torch version and thread
count, then every chunk of ids in the order they were run on the cache, and every crop. Equal keys mean the same
operations on the same inputs from the same state, so the stored logits and cache are exactly what this submission's
own call would have computed (single-threaded CPU kernels are deterministic for equal shapes and inputs;
tests/test_forward_memo.py checks memoised runs against runs without the memo bit for bit). What learner code can do
through the memo is only what it could do already: make calls, within its budget, that evict entries (bounded by
max_bytes) and so slow later submissions down.

Written here rather than with joblib.Memory or functools.lru_cache: the values are live KV caches handed out as
the server's to grow (copied first), the key is a chain built incrementally by the server, and eviction is by bytes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

MAX_BYTES = 256 << 20     # per worker: ~25 submissions' worth of distinct steps of SmolLM2 (about 200 KB a position)


def chain(path: bytes, *parts) -> bytes:
    """The path after one more operation: a chunk of ids [B, l] (its shape and values) or a plain value (a crop)."""
    digest = hashlib.sha256(path)
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.to(torch.long).contiguous()
            digest.update(repr(tuple(part.shape)).encode())
            digest.update(part.numpy().tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.digest()


def detached(cache):
    """A copy of a KV cache that can be grown or cropped without touching `cache`. transformers' DynamicLayer never
    writes into its tensors (update concatenates, crop slices; both rebind), so new cache and layer objects over the
    same tensors suffice: ~30 us where deepcopy takes ~2.4 ms, once per step. Other cache types are deep-copied."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return copy.deepcopy(cache)
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache.layers]
    return twin


def _plain(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer and layer.is_initialized
                                               for layer in cache.layers)


def _cache_bytes(cache) -> int:
    layers = getattr(cache, "layers", None) or []
    return sum(t.numel() * t.element_size() for layer in layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor))


class ForwardMemo:
    """LRU store of (logits [B, l, V], KV cache) by computation path, at most max_bytes in all."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, tuple[torch.Tensor, object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.loaded: set[Path] = set()          # the files load() added since the last clear()

    @staticmethod
    def origin(model: str, device: str) -> bytes:
        """The path of an empty cache: everything besides the inputs that decides a forward pass's numbers."""
        return chain(b"", model, str(device), torch.__version__, torch.get_num_threads())

    def get(self, key: bytes):
        """(logits, cache), or None. Both stay the memo's: read them, and copy the cache before growing it (most hits
        are followed by another hit, so copying here would be wasted)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
        logits, cache, _ = item
        return logits, cache

    def put(self, key: bytes, logits: torch.Tensor, cache) -> None:
        """Keep logits (never written to afterwards) and a copy of the cache, evicting the least recently used."""
        size = logits.numel() * logits.element_size() + _cache_bytes(cache)
        if size > self.max_bytes:
            return
        kept = detached(cache)
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (logits, kept, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.loaded = set()

    def keys(self) -> list[bytes]:
        with self._lock:
            return list(self._items)

    def save(self, path: Path, keys: list[bytes]) -> None:
        """Write the entries for `keys` (those still held) to a safetensors file, atomically (workers of one machine
        may race): the logits and every layer's keys and values, byte for byte. Only plain DynamicCaches (what
        SmolLM2 returns) are written."""
        from safetensors.torch import save_file

        tensors, names, layers = {}, [], []
        for key in keys:
            item = self.get(key)
            if item is None or not _plain(item[1]):
                continue
            logits, cache = item
            i = len(names)
            names.append(key.hex())
            layers.append(len(cache.layers))
            tensors[f"{i}.logits"] = logits.contiguous()
            for n, layer in enumerate(cache.layers):
                tensors[f"{i}.{n}.k"], tensors[f"{i}.{n}.v"] = layer.keys.contiguous(), layer.values.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata={"keys": json.dumps(names), "layers": json.dumps(layers)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self, path: Path) -> int:
        """Add the entries of a file written by save(); how many. Each cache is rebuilt as transformers builds a
        DynamicCache from data (one DynamicLayer per layer), so it grows exactly as the one that was saved."""
        from safetensors import safe_open
        from transformers.cache_utils import DynamicCache

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            names, layers = json.loads(meta["keys"]), json.loads(meta["layers"])
            for i, (name, count) in enumerate(zip(names, layers)):
                data = [(f.get_tensor(f"{i}.{n}.k"), f.get_tensor(f"{i}.{n}.v")) for n in range(count)]
                self.put(bytes.fromhex(name), f.get_tensor(f"{i}.logits"), DynamicCache(ddp_cache_data=data))
        self.loaded.add(Path(path))
        return len(names)


PER_WORKER = ForwardMemo()     # the process's one memo: every ModelServer in a grading worker shares it
