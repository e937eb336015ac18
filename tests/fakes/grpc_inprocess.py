"""A grpc.aio channel stand-in that calls a servicer object of this process: no socket, no TLS.

Generated stubs (`StorageServiceStub(channel)`, `KeyServiceStub(channel)`) take any object with
the four multi-callable factories, so the code under test keeps its real stubs and call sites;
only the transport is replaced. Fidelity kept where callers depend on it:

- requests and responses cross as serialized bytes (a caller that mutates a message after
  sending it, or a servicer that keeps one, cannot alias the other side's copy);
- a servicer's `SealstoreError` reaches the caller as an AioRpcError carrying its status and the
  sealstore error code in trailing metadata, exactly as sealstore.rpc's ErrorInterceptor sends it;
  any other exception as UNKNOWN, as grpc does;
- `timeout` becomes DEADLINE_EXCEEDED; a failing request iterator cancels a client-stream call
  (the caller sees asyncio.CancelledError, as with grpc.aio);
- server-streaming calls are async iterators with cancel().
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc
from grpc.aio import AioRpcError, Metadata

from sealstore import errors, frames


class FakeContext:
    """The bits of grpc.aio.ServicerContext the servicers use."""

    def __init__(self, peer_cert_pem: bytes | None = None):
        self._auth = {"x509_pem_cert": [peer_cert_pem]} if peer_cert_pem else {}
        self.trailing_metadata: tuple = ()

    def auth_context(self) -> dict:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple:
        return ()

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing_metadata = tuple(metadata)

    def cancelled(self) -> bool:
        return False

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise AioRpcError(code, Metadata(), Metadata(*(trailing_metadata or self.trailing_metadata)), details)


def rpc_error(exc: BaseException) -> AioRpcError:
    """What a grpc.aio caller receives when the servicer raised `exc`."""
    if isinstance(exc, AioRpcError):
        return exc
    if isinstance(exc, errors.SealstoreError):
        return AioRpcError(exc.grpc_status, Metadata(), Metadata(*errors.grpc_trailing_metadata(exc)), exc.message)
    if isinstance(exc, asyncio.TimeoutError):
        return AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, Metadata(), Metadata(), "Deadline Exceeded")
    return AioRpcError(grpc.StatusCode.UNKNOWN, Metadata(), Metadata(), f"Unexpected {type(exc)}: {exc}")


def _copy(message, serializer, deserializer=None, method: str = ""):
    """Through the wire format and back, with the codecs a real server uses for `method`
    (sealstore.frames for the bulk methods; sealstore.rpc installs the same)."""
    data = (serializer or frames.serialize)(message)
    if deserializer is None:
        sent = message.message if type(message) is frames.WithBlock else message
        deserializer = frames.SERVER_CODECS.get(method, (None, None))[0] or type(sent).FromString
    return deserializer(data)


class _ClientStreamFailed(Exception):
    """The caller's request iterator raised: the call is cancelled, as grpc.aio does."""


class InProcessChannel:
    """Routes '/package.Service/Method' to `servicer.Method(request, context)`.

    `before_call(method_name)`: an awaitable hook run before each call (fault injection: raise
    to fail the call, sleep to slow it down)."""

    def __init__(self, servicer: Any, *, before_call=None, context_factory=FakeContext):
        self.servicer = servicer
        self.before_call = before_call
        self.context_factory = context_factory
        self.closed = False

    def _method(self, path: str):
        name = path.rsplit("/", 1)[-1]
        return name, getattr(self.servicer, name)

    async def _enter(self, name: str) -> None:
        if self.before_call is not None:
            await self.before_call(name)

    # ---- the four multi-callable factories of grpc.aio.Channel ---------------------------

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **_):
        async def call(request, timeout=None, metadata=None, **__):
            name, fn = self._method(method)
            request = _copy(request, request_serializer, method=method)

            async def run():
                await self._enter(name)
                return await fn(request, self.context_factory())
            try:
                response = await asyncio.wait_for(run(), timeout)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise rpc_error(exc) from None
            return _copy(response, None, response_deserializer)
        return call

    def stream_unary(self, method, request_serializer=None, response_deserializer=None, **_):
        async def call(request_iterator, timeout=None, metadata=None, **__):
            name, fn = self._method(method)

            async def requests():
                source = request_iterator.__aiter__() if hasattr(request_iterator, "__aiter__") else None
                if source is None:
                    for r in request_iterator:
                        yield _copy(r, request_serializer, method=method)
                    return
                while True:
                    try:
                        r = await source.__anext__()
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:
                        raise _ClientStreamFailed() from exc
                    yield _copy(r, request_serializer, method=method)

            async def run():
                await self._enter(name)
                return await fn(requests(), self.context_factory())
            try:
                response = await asyncio.wait_for(run(), timeout)
            except _ClientStreamFailed:
                raise asyncio.CancelledError() from None
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise rpc_error(exc) from None
            return _copy(response, None, response_deserializer)
        return call

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, **_):
        channel = self

        def call(request, timeout=None, metadata=None, **__):
            name, fn = channel._method(method)
            return _ServerStream(channel, name, fn, _copy(request, request_serializer, method=method), response_deserializer,
                                 timeout)
        return call

    def stream_stream(self, method, request_serializer=None, response_deserializer=None, **_):
        raise NotImplementedError("no stream-stream method is faked (none in the storage or kms services)")

    async def close(self, grace=None) -> None:
        self.closed = True

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def channel_ready(self) -> None:
        return None


class _ServerStream:
    """The caller's side of a server-streaming call: async iterator, cancel()."""

    def __init__(self, channel: InProcessChannel, name: str, fn, request, deserializer, timeout):
        self._channel, self._name, self._fn, self._request = channel, name, fn, request
        self._deserializer = deserializer
        self._deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        self._source: AsyncIterator | None = None
        self._cancelled = False

    def cancel(self) -> bool:
        self._cancelled = True
        if self._source is not None and hasattr(self._source, "aclose"):
            asyncio.ensure_future(self._source.aclose())
        return True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._cancelled:
            raise AioRpcError(grpc.StatusCode.CANCELLED, Metadata(), Metadata(), "Locally cancelled by application!")
        remaining = None
        if self._deadline is not None:
            remaining = self._deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise rpc_error(asyncio.TimeoutError())
        try:
            if self._source is None:
                await asyncio.wait_for(self._channel._enter(self._name), remaining)
                self._source = self._fn(self._request, self._channel.context_factory()).__aiter__()
            item = await asyncio.wait_for(self._source.__anext__(), remaining)
        except StopAsyncIteration:
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise rpc_error(exc) from None
        return _copy(item, None, self._deserializer)


class QuorumClientOverChannels:
    """The real quorum client (one set) or router (several) over in-process channels: for test
    clusters holding `topology` and `channels` (address -> channel)."""

    default_timeout = 2.0

    def client(self, timeout: float | None = None):
        from pathlib import Path

        from sealstore.erasure import client as erasure_client
        timeout = self.default_timeout if timeout is None else timeout
        unused_certs = Path("/nonexistent-certs")  # never read: every channel is given
        cls = erasure_client.ErasureSetClient if len(self.topology.storage_sets) == 1 else erasure_client.ErasureSets
        return cls(self.topology, unused_certs, "gateway", timeout=timeout, channels=dict(self.channels))

    def run(self, fn, timeout: float | None = None):
        """Runs `await fn(client)` on a fresh event loop with a client built inside it."""
        import asyncio

        async def go():
            store = self.client(timeout=timeout)
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(go())
