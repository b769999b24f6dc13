"""openpi's websocket wire format: msgpack frames, numpy arrays as tagged maps.

An array travels as {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}
and a numpy scalar as {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}, the encoding
the published `openpi-client` uses, so its clients and ours read each other's frames. Object,
void and complex arrays are refused (no pickle on the wire).
"""
from __future__ import annotations

import msgpack
import numpy as np


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "VOc":
        raise ValueError(f"cannot send a numpy array of dtype {obj.dtype} (object, void and complex are refused)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode(obj: dict):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes):
    return msgpack.unpackb(data, object_hook=_decode)
