"""Prometheus counters for kms calls, counted by method and outcome."""
from __future__ import annotations

import time

import grpc
from prometheus_client import Counter, Histogram

from sealstore import errors
from services.kms.interceptor import SERVICE_PREFIX

CALLS = Counter("sealstore_kms_calls_total", "KeyService calls by method and outcome",
                ["method", "outcome"])
"""outcome is "ok" or the typed error's class name (e.g. KMSAccessDenied)."""
LATENCY = Histogram("sealstore_kms_call_seconds", "KeyService call latency by method", ["method"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every KeyService call, including the ones authorisation refuses.

    Place it before the authorisation interceptor so it wraps it.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or not full_method.startswith(SERVICE_PREFIX) or not handler.unary_unary:
            return handler
        method = full_method[len(SERVICE_PREFIX):]
        behavior = handler.unary_unary

        async def counted(request, context):
            start = time.perf_counter()
            outcome = "InternalError"
            try:
                response = await behavior(request, context)
                outcome = "ok"
                return response
            except errors.SealstoreError as err:
                outcome = type(err).__name__
                raise
            finally:
                CALLS.labels(method, outcome).inc()
                LATENCY.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            counted, handler.request_deserializer, handler.response_serializer)
