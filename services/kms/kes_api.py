"""A KES-compatible HTTPS API beside the kms's gRPC one, so MinIO (or any KES client) can use
sealstore's kms as its `MINIO_KMS_KES_ENDPOINT`.

Routes, JSON shapes and error bodies follow KES and its Go client minio/kms-go `kes`
(minio-facts.md §3.1-3.3). Clients authenticate with a certificate from the cluster's CA
(TLS client authentication is required at the handshake); the identity is the hex SHA-256
of the certificate's public key, and each route is authorised with the kms policy as the
KeyService method it corresponds to (`KES_ROUTES` below), so one policy file governs both APIs.

Differences from KES, on purpose:
- `/v1/key/encrypt/<name>` answers 501: the kms only wraps data keys it generated itself
  (KeyManager has no encrypt-arbitrary-plaintext operation), which is all MinIO needs.
- `/v1/key/list/<prefix>` returns every match in one page (`continue_at` is always "").
- `/v1/metrics` carries the KES metric names (kes_http_request_*, kes_system_*) only, one
  sample per family, as kms-go's Metrics parser requires; sealstore's own Prometheus metrics
  stay on the kms's `--metrics-port`.
- A disabled key answers 400 with a message saying so (KES has no disabled state).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import functools
import hashlib
import inspect
import json
import logging
import os
import platform
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealstore import errors
from sealstore.tls import tls_files
from services.kms.audit import AuditLog
from services.kms.policy import PolicyConfig
from services.kms.service import VERSION, KeyManager

log = logging.getLogger(__name__)

API = "kes"
MAX_BODY = 1 << 20
"""KES accepts request bodies up to 1 MiB on the routes that take one."""

# KES's own messages (kms-go kes/error.go): clients compare status and message.
MSG_NOT_FOUND = "key does not exist"
MSG_EXISTS = "key already exists"
MSG_NOT_AUTHENTIC = "decryption failed: ciphertext is not authentic"
MSG_NOT_ALLOWED = "not authorized: insufficient permissions"


@functools.lru_cache(maxsize=256)
def identity_of_der(der: bytes) -> str:
    """KES identity of a DER certificate: hex SHA-256 of its SubjectPublicKeyInfo."""
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def request_identity(request: web.Request) -> str:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return identity_of_der(der) if der else ""


def kes_error(err: errors.SealstoreError) -> tuple[int, str]:
    """HTTP status and message of a typed kms error, as a KES server would answer it."""
    if isinstance(err, errors.KMSNotFound):
        return 404, MSG_NOT_FOUND
    if isinstance(err, errors.KMSKeyExists):
        return 400, MSG_EXISTS
    if isinstance(err, errors.KMSInvalidCiphertext):
        return 400, MSG_NOT_AUTHENTIC
    if isinstance(err, errors.KMSAccessDenied):
        return 403, MSG_NOT_ALLOWED
    if isinstance(err, errors.NotImplementedS3):
        return 501, err.message
    if err.http_status >= 500:
        # KES answers keystore failures with 502 Bad Gateway: the kms is up, what is behind it is not.
        return 502, err.message
    return err.http_status, err.message


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"message": message}, status)


def rfc3339(epoch_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_ns / 1e9, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version_of(result: Any) -> int | None:
    value = getattr(result, "version", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ---------------------------------------------------------------- request bodies

async def _json_body(request: web.Request) -> dict:
    """The request's JSON object ({} for an empty body); InvalidArgument if it is not one."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # a chunked body past client_max_size
        raise errors.EntityTooLarge(f"request bodies are limited to {MAX_BODY} bytes") from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the request body must be a JSON object")
    return body


def _b64_field(body: dict, name: str, *, required: bool = False) -> bytes:
    """A []byte field as Go's encoding/json writes it: standard base64 with padding."""
    value = body.get(name)
    if value is None:
        if required:
            raise errors.InvalidArgument(f"the request body lacks {name!r}")
        return b""
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"{name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidArgument(f"{name!r} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- metrics in KES's names

PROMETHEUS_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
RESPONSE_TIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 3.0, 5.0, 10.0)


class KesMetrics:
    """Counters under KES's metric names, rendered by hand in the Prometheus text format with
    exactly one sample per family (kms-go's parser rejects families with several)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.success = 0  # 2xx/3xx
        self.error = 0    # 4xx: the client's fault
        self.failure = 0  # 5xx: ours
        self.active = 0
        self.audit_events = 0
        self.bucket_counts = [0] * len(RESPONSE_TIME_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, status: int, seconds: float) -> None:
        if status >= 500:
            self.failure += 1
        elif status >= 400:
            self.error += 1
        else:
            self.success += 1
        for i, bound in enumerate(RESPONSE_TIME_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def render(self) -> str:
        lines: list[str] = []

        def one(name: str, kind: str, help_: str, value: float) -> None:
            lines.extend((f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value:g}"))

        one("kes_http_request_success", "counter", "Requests answered with a 2xx or 3xx status.", self.success)
        one("kes_http_request_error", "counter", "Requests answered with a 4xx status.", self.error)
        one("kes_http_request_failure", "counter", "Requests answered with a 5xx status.", self.failure)
        one("kes_http_request_active", "gauge", "Requests being served.", self.active)
        one("kes_log_audit_events", "counter", "Audit events written.", self.audit_events)
        one("kes_log_error_events", "counter", "Error events written.", 0)
        lines.extend(("# HELP kes_http_response_time Response time in seconds.",
                      "# TYPE kes_http_response_time histogram"))
        for bound, count in zip(RESPONSE_TIME_BUCKETS, self.bucket_counts):
            lines.append(f'kes_http_response_time_bucket{{le="{bound:g}"}} {count}')
        lines.append(f'kes_http_response_time_bucket{{le="+Inf"}} {self.latency_count}')
        lines.append(f"kes_http_response_time_sum {self.latency_sum:g}")
        lines.append(f"kes_http_response_time_count {self.latency_count}")
        one("kes_system_up_time", "gauge", "Seconds the kms has been up.", round(time.monotonic() - self.started))
        one("kes_system_num_cpu", "gauge", "Logical CPUs of the machine.", os.cpu_count() or 1)
        one("kes_system_num_cpu_used", "gauge", "Logical CPUs the kms may use.", _usable_cpus())
        one("kes_system_num_threads", "gauge", "Threads of the kms process.", _thread_count())
        one("kes_system_mem_heap_used", "gauge", "Resident memory of the kms process in bytes.", _resident_bytes())
        one("kes_system_mem_heap_objects", "gauge", "Not tracked by the Python kms.", 0)
        one("kes_system_mem_stack_used", "gauge", "Not tracked by the Python kms.", 0)
        return "\n".join(lines) + "\n"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ---------------------------------------------------------------- routes

@dataclass(frozen=True)
class KesRoute:
    """One KES route: what it is authorised and audited as."""

    methods: tuple[str, ...]
    path: str
    """aiohttp path; `{name}` is the key name, `{prefix}` a listing prefix."""
    api_path: str
    """The path KES lists in /v1/api (without arguments)."""
    handler: str
    """Name of the KesApi method serving it."""
    policy_method: str = ""
    """The KeyService method whose policy patterns authorise this route; "" = any client."""
    audited: bool = False
    max_body: int = 0
    timeout_s: int = 15


KES_ROUTES: tuple[KesRoute, ...] = (
    KesRoute(("GET",), "/version", "/version", "version", timeout_s=10),
    KesRoute(("GET",), "/v1/status", "/v1/status", "status", "Status", audited=True),
    KesRoute(("GET",), "/v1/metrics", "/v1/metrics", "prometheus_metrics", "Status"),
    KesRoute(("GET",), "/v1/api", "/v1/api", "api", "Status", timeout_s=10),
    KesRoute(("PUT", "POST"), "/v1/key/create/{name}", "/v1/key/create", "create_key", "CreateKey", audited=True),
    KesRoute(("PUT", "POST"), "/v1/key/import/{name}", "/v1/key/import", "import_key", "ImportKey",
             audited=True, max_body=MAX_BODY),
    KesRoute(("GET",), "/v1/key/describe/{name}", "/v1/key/describe", "describe_key", "DescribeKey", audited=True),
    KesRoute(("GET",), "/v1/key/list", "/v1/key/list", "list_keys", "ListKeys", audited=True),
    KesRoute(("GET",), "/v1/key/list/{prefix}", "/v1/key/list", "list_keys", "ListKeys", audited=True),
    KesRoute(("DELETE",), "/v1/key/delete/{name}", "/v1/key/delete", "delete_key", "DeleteKey", audited=True),
    KesRoute(("PUT", "POST"), "/v1/key/generate/{name}", "/v1/key/generate", "generate_key", "GenerateKey",
             audited=True, max_body=MAX_BODY),
    KesRoute(("PUT", "POST"), "/v1/key/encrypt/{name}", "/v1/key/encrypt", "encrypt", "Encrypt",
             audited=True, max_body=MAX_BODY),
    KesRoute(("PUT", "POST"), "/v1/key/decrypt/{name}", "/v1/key/decrypt", "decrypt", "Decrypt",
             audited=True, max_body=MAX_BODY),
    KesRoute(("GET",), "/v1/identity/self/describe", "/v1/identity/self/describe", "describe_self"),
)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs a KeyManager method off the event loop (a keystore may block on disk or network);
    awaits it directly if it is a coroutine function."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)


class KesApi:
    """The KES routes over one KeyManager, authorised by one policy, audited to one log."""

    def __init__(self, manager: KeyManager, policy: PolicyConfig, audit: AuditLog | None) -> None:
        self.manager = manager
        self.policy = policy
        self.audit = audit
        self.metrics = KesMetrics()

    # -- plumbing shared by every route

    def endpoint(self, route: KesRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        serve = getattr(self, route.handler)

        async def handle(request: web.Request) -> web.StreamResponse:
            identity = request_identity(request)
            key = request.match_info.get("name") or request.match_info.get("prefix") or ""
            try:
                if route.max_body and (request.content_length or 0) > route.max_body:
                    raise errors.EntityTooLarge(f"request bodies are limited to {route.max_body} bytes")
                if not route.audited or self.audit is None:
                    return await self._authorised(route, serve, request, identity, key)
                with self.audit.operation(API, identity, route.policy_method, key) as event:
                    self.metrics.audit_events += 1
                    response, version = await self._authorised(route, serve, request, identity, key,
                                                                with_version=True)
                    event.version = version
                    return response
            except errors.SealstoreError as err:
                status, message = kes_error(err)
                return error_response(status, message)
            except TimeoutError:
                return error_response(502, f"{route.api_path} timed out after {route.timeout_s}s")
            except Exception:
                log.exception("KES API %s %s failed", request.method, route.api_path)
                return error_response(500, "internal error")

        return handle

    async def _authorised(self, route: KesRoute, serve, request: web.Request, identity: str, key: str,
                          *, with_version: bool = False):
        if route.policy_method:
            # ListKeys is authorised like its gRPC twin, whose request names no key.
            policy_key = "" if route.policy_method == "ListKeys" else key
            if not self.policy.is_allowed(identity, route.policy_method, policy_key):
                log.warning("denied %s on key %r for identity %s (KES API %s)", route.policy_method,
                            policy_key, identity or "<none>", route.api_path)
                raise errors.KMSAccessDenied(
                    f"identity {identity or '<none>'} may not call {route.policy_method} on key {policy_key!r}")
        async with asyncio.timeout(route.timeout_s):
            response, version = await serve(request, identity, key)
        return (response, version) if with_version else response

    @web.middleware
    async def count(self, request: web.Request, handler) -> web.StreamResponse:
        """KES's request metrics, for every request including unknown routes."""
        started = time.perf_counter()
        self.metrics.active += 1
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.metrics.active -= 1
            self.metrics.observe(status, time.perf_counter() - started)

    # -- the routes; each returns (response, key version used or None)

    async def version(self, request, identity, key):
        return json_response({"version": VERSION, "commit": ""}), None

    async def status(self, request, identity, key):
        started = time.perf_counter()
        body: dict[str, Any] = {
            "os": platform.system().lower(), "arch": platform.machine(),
            "num_cpu": os.cpu_count() or 1, "num_cpu_used": _usable_cpus(),
            "mem_heap_used": _resident_bytes(), "mem_stack_used": 0,
        }
        try:
            status = await _call(self.manager.status, identity)
        except errors.SealstoreError:
            # Like KES: the kms answers, and says its keystore is out of reach.
            body.update(version=VERSION, uptime=round(time.monotonic() - self.metrics.started),
                        keystore_unreachable=True, keystore_unavailable=True)
            return json_response(body), None
        body.update(version=status.version, uptime=round(status.uptime_seconds),
                    # Go's time.Duration in JSON: integer nanoseconds.
                    keystore_latency=max(1, int((time.perf_counter() - started) * 1e9)))
        if not getattr(status, "keystore_reachable", True):  # answering from the cache
            body.update(keystore_unreachable=True, keystore_unavailable=True)
        return json_response(body), None

    async def prometheus_metrics(self, request, identity, key):
        return web.Response(body=self.metrics.render().encode(),
                            headers={"Content-Type": PROMETHEUS_TEXT_FORMAT}), None

    async def api(self, request, identity, key):
        listed = []
        for route in KES_ROUTES:
            for method in route.methods:
                entry = {"method": method, "path": route.api_path, "max_body": route.max_body,
                         "timeout": route.timeout_s}
                if entry not in listed:
                    listed.append(entry)
        return json_response(listed), None

    async def create_key(self, request, identity, key):
        info = await _call(self.manager.create_key, key, identity)
        return web.Response(status=200), _version_of(info)

    async def import_key(self, request, identity, key):
        body = await _json_body(request)
        material = _b64_field(body, "key", required=True)
        cipher = body.get("cipher") or "AES256"
        if cipher not in ("AES256", "AES256-GCM_SHA256"):
            raise errors.InvalidArgument(f"unsupported cipher {cipher!r}: the kms only keeps AES256 keys")
        info = await _call(self.manager.import_key, key, material, identity)
        return web.Response(status=200), _version_of(info)

    async def describe_key(self, request, identity, key):
        info = await _call(self.manager.describe_key, key)
        return json_response({"name": info.name, "algorithm": info.algorithm,
                              "created_at": rfc3339(info.created_ns), "created_by": info.created_by}), \
            _version_of(info)

    async def list_keys(self, request, identity, key):
        infos = await _call(self.manager.list_keys, list_pattern(key))
        return json_response({"names": sorted(info.name for info in infos), "continue_at": ""}), None

    async def delete_key(self, request, identity, key):
        await _call(self.manager.delete_key, key, identity)
        return web.Response(status=200), None

    async def generate_key(self, request, identity, key):
        context = _b64_field(await _json_body(request), "context")
        dek = await _call(self.manager.generate_key, key, context)
        return json_response({"plaintext": _b64(dek.plaintext), "ciphertext": _b64(dek.ciphertext)}), \
            _version_of(dek)

    async def encrypt(self, request, identity, key):
        raise errors.NotImplementedS3(
            "the kms does not encrypt arbitrary plaintext: use /v1/key/generate for data keys")

    async def decrypt(self, request, identity, key):
        body = await _json_body(request)
        sealed = _b64_field(body, "ciphertext", required=True)
        context = _b64_field(body, "context")
        opened = await _call(self.manager.decrypt_versioned, key, sealed, context)
        return json_response({"plaintext": _b64(opened.plaintext)}), _version_of(opened)

    async def describe_self(self, request, identity, key):
        admin = bool(identity) and identity == self.policy.admin
        policy_name = self.policy.identities.get(identity, "")
        policy = self.policy.policies.get(policy_name)
        return json_response({
            "identity": identity, "admin": admin, "policy": policy_name,
            # kms-go reads allow/deny as maps from pattern to (empty) rule.
            "allow": {pattern: {} for pattern in (policy.allow if policy else ())},
            "deny": {pattern: {} for pattern in (policy.deny if policy else ())},
        }), None


def list_pattern(prefix: str) -> str:
    """KeyManager glob for a KES listing prefix. Key names cannot hold glob characters, so a
    prefix made of name characters is matched literally; an older KES client's pattern such as
    "*" or "bucket-*" is passed on as the glob it is."""
    if any(c in prefix for c in "*?["):
        return prefix
    return prefix + "*"


def build_app(manager: KeyManager, policy: PolicyConfig, audit: AuditLog | None) -> web.Application:
    api = KesApi(manager, policy, audit)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[api.count])
    for route in KES_ROUTES:
        handler = api.endpoint(route)
        for method in route.methods:
            app.router.add_route(method, route.path, handler)
    app["kes_api"] = api
    return app


def server_ssl_context(certs: Path, role: str = "kms") -> ssl.SSLContext:
    """TLS for the KES API: the kms's certificate, and a client certificate from the cluster's
    CA required at the handshake (as KES, whose every route but /version needs an identity)."""
    files = tls_files(certs, role)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert), str(files.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_kes_api(manager: KeyManager, policy: PolicyConfig, audit: AuditLog | None,
                        certs: Path, listen: str) -> web.AppRunner:
    """Serves the KES API on `listen` (host:port) in the running event loop; stop it with
    `await runner.cleanup()`."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(build_app(manager, policy, audit), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port),
                       ssl_context=server_ssl_context(certs), reuse_address=True)
    await site.start()
    log.info("KES-compatible HTTPS API listening on %s", listen)
    return runner
