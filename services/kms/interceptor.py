"""The gRPC side of kms authorisation: every KeyService call is checked against the policy.

Health and reflection calls are left open, as KES leaves /version and /v1/ready open.
"""
from __future__ import annotations

import logging

import grpc

from sealstore import errors
from sealstore.authz import peer_principal
from sealstore.rpc import peer_identity
from services.kms.policy import PolicyConfig

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/sealstore.v1.KeyService/"


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Raises KMSAccessDenied for KeyService calls the caller's policy does not allow.

    It runs inside sealstore.rpc's ErrorInterceptor, so it wraps the handler's behaviour and
    raises from inside it; the error interceptor turns that into PERMISSION_DENIED.
    """

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or not full_method.startswith(SERVICE_PREFIX):
            return handler
        if not handler.unary_unary:
            # Every KeyService method is unary; refuse anything else rather than let it through.
            raise RuntimeError(f"kms authorisation cannot guard streaming method {full_method}")
        method = full_method[len(SERVICE_PREFIX):]
        behavior = handler.unary_unary
        policy = self.policy

        async def authorised(request, context):
            identity = peer_identity(context)
            key_name = getattr(request, "name", "")
            if not policy.is_allowed(identity, method, key_name):
                principal = peer_principal(context)
                log.warning("denied %s on key %r for identity %s (role %s, instance %s)", method, key_name,
                            identity or "<none>", principal.role if principal else "<none>",
                            principal.instance if principal else "<none>")
                raise errors.KMSAccessDenied(
                    f"identity {identity or '<none>'} may not call {method} on key {key_name!r}")
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            authorised, handler.request_deserializer, handler.response_serializer)
