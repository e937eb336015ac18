"""SSE-C (customer-provided keys): the parts both the gateway and the crypto worker need.

The customer's key is never stored. What is stored is a keyed hash, the check value, that tells
whether a later request brings the same key: HMAC-SHA256(customer key, "SSE-C key check" || IV),
with the object's 32-byte key-derivation IV. The gateway compares it on HEAD (which reads only
metadata); the worker on GET, before it unseals. Bound to the IV, so two objects under one
customer key carry unrelated check values.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from sealstore import errors

CUSTOMER_KEY_SIZE = 32
CHECK_LABEL = b"SSE-C key check"


def customer_key_check(customer_key: bytes, iv: bytes) -> bytes:
    if len(customer_key) != CUSTOMER_KEY_SIZE:
        raise ValueError("an SSE-C customer key is 32 bytes")
    return hmac.new(bytes(customer_key), CHECK_LABEL + bytes(iv), hashlib.sha256).digest()


def customer_key_matches(customer_key: bytes, iv: bytes, check: bytes) -> bool:
    return hmac.compare_digest(customer_key_check(customer_key, iv), bytes(check))


def key_md5(customer_key: bytes) -> str:
    """base64 of the MD5 of the key: what x-amz-server-side-encryption-customer-key-MD5 carries."""
    return base64.b64encode(hashlib.md5(bytes(customer_key)).digest()).decode("ascii")


SSE_C_DOMAIN = "SSE-C"


def check_request_key(envelope, customer_key: bytes | None, *, resource: str = "") -> None:
    """AWS's answers to the customer key a read brings (`envelope`: the object's
    EncryptionEnvelope, None for a plain object): an SSE-C object needs its key (400
    InvalidRequest without one, 403 AccessDenied for another one); any other object refuses SSE-C
    parameters (400 InvalidRequest)."""
    is_ssec = envelope is not None and envelope.domain == SSE_C_DOMAIN
    if not is_ssec:
        if customer_key is not None:
            raise errors.InvalidRequest("The encryption parameters are not applicable to this object.",
                                        resource=resource)
        return
    if customer_key is None:
        raise errors.InvalidRequest("The object was stored using a form of Server Side Encryption. "
                                    "The correct parameters must be provided to retrieve the object.",
                                    resource=resource)
    if len(customer_key) != CUSTOMER_KEY_SIZE or (
            envelope.customer_key_check
            and not customer_key_matches(customer_key, envelope.iv, envelope.customer_key_check)):
        raise errors.CustomerKeyMismatch(resource=resource)
