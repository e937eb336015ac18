"""In-process: the request id crosses a real gRPC hop (client channel -> server interceptor) and
every log line names it, in both log formats."""
from __future__ import annotations

import asyncio
import json
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sealstore import observability


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class _Echo(health.aio.HealthServicer):
    """Health.Check that logs one line of its own while answering."""

    async def Check(self, request, context):
        logging.getLogger("test.echo").info("checking %s", request.service)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _call_with(request_id: str, records: _Records) -> None:
    server = grpc.aio.server(interceptors=[observability.RpcObservability()])
    health_pb2_grpc.add_HealthServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        channel = observability.traced_channel(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        async with channel:
            token = observability.bind_request_id(request_id) if request_id else None
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="x"))
            finally:
                if token is not None:
                    observability.unbind_request_id(token)
    finally:
        await server.stop(None)


def _capture(request_id: str) -> list[logging.LogRecord]:
    records = _Records()
    records.addFilter(observability._RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        asyncio.run(_call_with(request_id, records))
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)
    return [r for r in records.records if r.name in ("test.echo", "sealstore.rpc.access")]


def test_the_request_id_reaches_the_server_and_its_log_lines():
    records = _capture("0123456789ABCDEF")
    echo = [r for r in records if r.name == "test.echo"]
    access = [r for r in records if r.name == "sealstore.rpc.access"]
    assert len(echo) == 1 and echo[0].request_id == "0123456789ABCDEF"
    assert len(access) == 1 and access[0].request_id == "0123456789ABCDEF"
    assert access[0].fields["rpc"] == "/grpc.health.v1.Health/Check" and access[0].fields["code"] == "OK"

    line = json.loads(observability.JsonFormatter("storage").format(access[0]))
    assert line["request_id"] == "0123456789ABCDEF" and line["service"] == "storage"
    assert line["rpc"] == "/grpc.health.v1.Health/Check" and line["duration_ms"] >= 0
    text = observability.TextFormatter("storage").format(echo[0])
    assert text.endswith("checking x [0123456789ABCDEF]")


def test_without_a_request_id_no_metadata_and_no_id_in_the_line():
    records = _capture("")
    echo = [r for r in records if r.name == "test.echo"]
    assert len(echo) == 1 and echo[0].request_id == ""
    assert "request_id" not in json.loads(observability.JsonFormatter("kms").format(echo[0]))


def test_a_malformed_incoming_id_is_ignored():
    class Details:
        invocation_metadata = ((observability.REQUEST_ID_METADATA, "bad id\nforged line"),)
    assert observability._incoming_request_id(Details()) == ""
    Details.invocation_metadata = ((observability.REQUEST_ID_METADATA, "4F0C9D1A2B3E4F56"),)
    assert observability._incoming_request_id(Details()) == "4F0C9D1A2B3E4F56"


def test_json_lines_escape_what_a_client_controls():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", ("a\nb\"c",), None)
    record.fields = {"key": "line\nbreak"}
    line = observability.JsonFormatter("gateway").format(record)
    assert "\n" not in line and json.loads(line)["msg"] == "key a\nb\"c"
