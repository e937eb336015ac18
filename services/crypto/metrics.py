"""Prometheus metrics of the crypto worker: plaintext bytes sealed and opened, and objects, by
SSE mode (the envelope's domain: SSE-KMS, SSE-S3, SSE-C; "none" for unencrypted objects)."""
from __future__ import annotations

from prometheus_client import Counter

SEALED = Counter("sealstore_crypto_sealed_bytes_total", "Plaintext bytes encrypted and stored (PUT, part, copy), "
                 "by SSE mode", ["sse"])
OPENED = Counter("sealstore_crypto_opened_bytes_total", "Plaintext bytes read and decrypted for a GET, by SSE mode",
                 ["sse"])
OBJECTS = Counter("sealstore_crypto_objects_total", "Objects written or read through the worker, by operation "
                  "(put, part, copy, get) and SSE mode", ["operation", "sse"])


def sse_mode(meta) -> str:
    return (meta.encryption.domain or "unknown") if meta.HasField("encryption") else "none"


def sealed(operation: str, meta) -> None:
    mode = sse_mode(meta)
    SEALED.labels(mode).inc(meta.size)
    OBJECTS.labels(operation, mode).inc()
