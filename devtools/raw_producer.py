"""Kafka messages no ordinary client writes, for the tests: header names that are not UTF-8
(confluent-kafka's producer takes names as text only; a name with a lone surrogate crashes it).
librdkafka itself, bundled with confluent-kafka, is called through ctypes."""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Sequence

import confluent_kafka

# rd_kafka_vtype_t and the flag that makes librdkafka copy what it is given.
_VTYPE_END, _VTYPE_TOPIC, _VTYPE_VALUE, _VTYPE_KEY, _VTYPE_MSGFLAGS, _VTYPE_HEADER = 0, 1, 4, 5, 7, 9
_MSG_F_COPY = 0x2
_PRODUCER = 0


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Value(ctypes.Union):
    _fields_ = [("cstr", ctypes.c_char_p), ("i", ctypes.c_int), ("mem", _Mem), ("header", _Header), ("_pad", ctypes.c_char * 64)]


class _Vu(ctypes.Structure):
    """rd_kafka_vu_t: one argument of rd_kafka_produceva."""

    _fields_ = [("vtype", ctypes.c_int), ("u", _Value)]


def _library() -> ctypes.CDLL:
    libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)), "confluent_kafka.libs")
    lib = ctypes.CDLL(glob.glob(os.path.join(libs, "librdkafka*.so*"))[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Vu), ctypes.c_size_t]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


RawHeaders = Sequence[tuple[bytes, bytes | None]]


def produce_raw(bootstrap_servers: str, topic: str, messages: Sequence[tuple[bytes | None, bytes | None, RawHeaders]]) -> None:
    """Produce ``messages`` ((key, value, headers) with header names as bytes, without NUL) to
    ``topic`` in order, and wait until the broker has them all."""
    lib = _library()
    error = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for name, value in ((b"bootstrap.servers", bootstrap_servers.encode()), (b"max.in.flight", b"1")):
        if lib.rd_kafka_conf_set(conf, name, value, error, len(error)) != 0:
            raise RuntimeError(error.value.decode())
    producer = lib.rd_kafka_new(_PRODUCER, conf, error, len(error))
    if not producer:
        raise RuntimeError(error.value.decode())
    try:
        for key, value, headers in messages:
            buffers = []  # kept alive until produceva has copied them

            def memory(data: bytes) -> _Mem:
                buffers.append(ctypes.create_string_buffer(data, len(data)))
                return _Mem(ctypes.cast(buffers[-1], ctypes.c_void_p), len(data))

            args = [_Vu(_VTYPE_TOPIC, _Value(cstr=topic.encode())), _Vu(_VTYPE_MSGFLAGS, _Value(i=_MSG_F_COPY))]
            if key is not None:
                args.append(_Vu(_VTYPE_KEY, _Value(mem=memory(key))))
            if value is not None:
                args.append(_Vu(_VTYPE_VALUE, _Value(mem=memory(value))))
            for name, header_value in headers:
                data = memory(header_value) if header_value is not None else _Mem(None, 0)
                args.append(_Vu(_VTYPE_HEADER, _Value(header=_Header(name, data.ptr, data.size))))
            failure = lib.rd_kafka_produceva(producer, (_Vu * len(args))(*args), len(args))
            if failure:
                raise RuntimeError(lib.rd_kafka_error_string(failure).decode())
        if lib.rd_kafka_flush(producer, 30000) != 0:
            raise RuntimeError("the broker did not confirm every message in 30 s")
    finally:
        lib.rd_kafka_destroy(producer)
