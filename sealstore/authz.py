"""Who may call what inside the cluster: one deny-by-default table per service, by role.

The role comes from the caller's certificate, verified by the TLS handshake against the cluster
CA: its URI SAN `spiffe://sealstore/<role>/<instance>` (sealstore/tls.py). Roles, not public-key
hashes, because every storage node, worker and gateway instance has its own key: a table by role
stays the same when an instance is added or its certificate reissued, and the CA is what binds a
role to a key. The kms keeps KES's per-identity policy.json (MinIO and kms-go clients expect it);
its default policy is generated from the `kms` table below, one entry per instance identity.

`POLICY_TABLES` is the whole identity x method matrix; tests/cluster/test_authz.py calls every
cell on a running cluster and docs/threat-model.md prints it (`matrix_markdown`).
Health and reflection stay open to any certificate of the cluster CA, for grpcurl and probes.
"""
from __future__ import annotations

import logging
import time

import grpc

from sealstore import errors
from sealstore.tls import ROLES, Principal, principal_of
from sealstore.v1 import crypto_pb2, heal_pb2, kms_pb2, storage_pb2

log = logging.getLogger(__name__)

SERVICES = {
    "storage": storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
    "crypto": crypto_pb2.DESCRIPTOR.services_by_name["CryptoService"],
    "kms": kms_pb2.DESCRIPTOR.services_by_name["KeyService"],
    "heal": heal_pb2.DESCRIPTOR.services_by_name["HealService"],
}
"""Service short name -> its protobuf descriptor (the methods the tables must cover)."""

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def methods_of(service: str) -> tuple[str, ...]:
    return tuple(m.name for m in SERVICES[service].methods)


_NOTHING: frozenset[str] = frozenset()

POLICY_TABLES: dict[str, dict[str, frozenset[str]]] = {
    "storage": {
        # What the S3 front does itself through the quorum client: bucket operations (with their
        # undo: DeleteBucket after a failed MakeBucket, MakeBucket + SetBucketEncryption after a
        # failed DeleteBucket), HEAD, LIST and DELETE of objects. Never shard bytes.
        # Multipart: listing uploads and parts, abort (a prefix delete in `.multipart`) and complete
        # (CompleteMultipart moves the parts' shards; no shard bytes pass through the gateway).
        # Object tags and bucket policy/tags are metadata.
        "gateway": frozenset({"MakeBucket", "GetBucket", "ListBuckets", "DeleteBucket", "SetBucketEncryption",
                              "GetObjectMeta", "ListObjects", "DeleteObject", "CompleteMultipart",
                              "UpdateObjectTags", "UpdateBucket"}),
        # PUT (bucket check, shards, commit, abort, conditional undo delete), GET (metadata, shards)
        # and heal on read (CheckShard, rebuild, and MakeBucket + SetBucketEncryption to restore a
        # bucket on a replaced drive, copied from the quorum's bucket info).
        "crypto": frozenset({"GetBucket", "MakeBucket", "SetBucketEncryption", "WriteShard", "CommitObject",
                             "AbortUpload", "GetObjectMeta", "ReadShard", "DeleteObject", "CheckShard"}),
        # `sealstore admin heal|drives` and `sealstore key rewrap`: ciphertext shards and metadata
        # only; no DeleteBucket (buckets are removed through S3).
        "admin": frozenset({"ListBuckets", "GetBucket", "MakeBucket", "SetBucketEncryption", "CheckShard",
                            "ReadShard", "WriteShard", "CommitObject", "AbortUpload", "UpdateObjectEncryption",
                            "DeleteObject", "GetObjectMeta", "ListObjects", "NodeStatus"}),
        # The in-cluster heal service (services/heal): exactly what sealstore/erasure/heal.py
        # calls. Check, read, rebuild, conditional commit, removal of dangling copies, and
        # bucket metadata restored on a replaced drive; never re-keys objects or removes buckets.
        "heal": frozenset({"ListBuckets", "GetBucket", "MakeBucket", "SetBucketEncryption", "ListObjects",
                           "CheckShard", "ReadShard", "WriteShard", "CommitObject", "AbortUpload",
                           "DeleteObject"}),
        "storage": _NOTHING,
        "kms": _NOTHING,
    },
    "crypto": {
        # Only the gateway gets plaintext out of (or puts plaintext into) the worker.
        "gateway": frozenset({"PutObject", "GetObject", "CreateMultipartUpload", "CopyObject"}),
        "crypto": _NOTHING,
        "admin": _NOTHING,
        "heal": _NOTHING,
        "storage": _NOTHING,
        "kms": _NOTHING,
    },
    "kms": {
        # The gateway checks that a bucket's default key exists and is enabled; nothing else.
        "gateway": frozenset({"DescribeKey"}),
        # Data keys for PUT and GET; the worker never manages keys or re-wraps.
        "crypto": frozenset({"GenerateKey", "Decrypt"}),
        # The KES admin: key lifecycle, rewrap.
        "admin": frozenset(methods_of("kms")),
        "heal": _NOTHING,
        "storage": _NOTHING,
        "kms": _NOTHING,
    },
    "heal": {
        # Starting a heal and reading its progress are the operator's (`sealstore admin heal`).
        "admin": frozenset(methods_of("heal")),
        "gateway": _NOTHING,
        "crypto": _NOTHING,
        "heal": _NOTHING,
        "storage": _NOTHING,
        "kms": _NOTHING,
    },
}


def allowed(service: str, role: str, method: str) -> bool:
    return method in POLICY_TABLES[service].get(role, _NOTHING)


def check_tables() -> None:
    """Every table names every role, and only methods its service has (a typo would silently deny)."""
    for service, table in POLICY_TABLES.items():
        known = set(methods_of(service))
        if set(table) != set(ROLES):
            raise AssertionError(f"{service} table covers roles {sorted(table)}, not {sorted(ROLES)}")
        for role, methods in table.items():
            if not methods <= known:
                raise AssertionError(f"{service} table gives {role} unknown methods {sorted(methods - known)}")


check_tables()


def peer_principal(context: grpc.aio.ServicerContext | grpc.ServicerContext) -> Principal | None:
    """The role and instance of the caller's verified certificate (None if it names none)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    return principal_of(bytes(pems[0])) if pems else None


class _DenialLog:
    """One warning per (instance, method) and minute: a misconfigured or hostile caller
    retrying in a loop must not flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def denied(self, service: str, principal: Principal | None, method: str) -> None:
        who = (principal.instance if principal else "<no role>", method)
        now = time.monotonic()
        last, suppressed = self._last.get(who, (0.0, 0))
        if now - last < self.interval:
            self._last[who] = (last, suppressed + 1)
            return
        if len(self._last) > 4096:
            self._last.clear()
        self._last[who] = (now, 0)
        log.warning("%s denied %s to role %s instance %s identity %s%s", service, method,
                    principal.role if principal else "<none>", who[0],
                    principal.identity if principal else "<unknown>",
                    f" ({suppressed} more denials not logged)" if suppressed else "")


class RoleAuthorization(grpc.aio.ServerInterceptor):
    """Refuses with AccessDenied (PERMISSION_DENIED) every call of `service` the caller's role
    may not make. Runs inside sealstore.rpc's ErrorInterceptor, which maps the typed error."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.prefix = f"/{SERVICES[service].full_name}/"
        self.table = POLICY_TABLES[service]
        self.denials = _DenialLog()

    def _check(self, context, method: str) -> None:
        principal = peer_principal(context)
        if principal is not None and method in self.table.get(principal.role, _NOTHING):
            return
        self.denials.denied(self.service, principal, method)
        raise errors.AccessDenied(
            f"{principal.role + ' ' + principal.instance if principal else 'a certificate without a role'} "
            f"may not call {self.service} {method}")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or full_method.startswith(OPEN_SERVICES):
            return handler
        if not full_method.startswith(self.prefix):
            # A service this server hosts that no table covers: deny by default.
            method = full_method
        else:
            method = full_method[len(self.prefix):]
        check = self._check

        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            async def guarded_unary(request_or_iterator, context):
                check(context, method)
                return await behavior(request_or_iterator, context)

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(guarded_unary, handler.request_deserializer, handler.response_serializer)

        behavior = handler.unary_stream or handler.stream_stream

        async def guarded_stream(request_or_iterator, context):
            check(context, method)
            result = behavior(request_or_iterator, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result  # a servicer writing with context.write()

        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make(guarded_stream, handler.request_deserializer, handler.response_serializer)


def matrix_markdown() -> str:
    """The identity x method matrix as Markdown tables, one per service (docs/threat-model.md)."""
    lines = []
    for service in POLICY_TABLES:
        lines += [f"### {service} (`{SERVICES[service].full_name}`)", "",
                  "| method | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
        for method in methods_of(service):
            cells = ["allow" if allowed(service, role, method) else "deny" for role in ROLES]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
