"""The real kms (KeyManager and its gRPC servicer, over the in-memory keystore) in this process,
reached by the crypto worker's real KmsClient through an in-process channel."""
from __future__ import annotations

from services.crypto.kms_client import KmsClient
from services.kms.local_backend import MemoryKeyStore
from services.kms.service import KeyManager
from services.kms.servicer import KeyServiceServicer

from tests.fakes.grpc_inprocess import InProcessChannel


class InProcessKms:
    def __init__(self):
        self.manager = KeyManager(MemoryKeyStore())
        self.channel = InProcessChannel(KeyServiceServicer(self.manager), before_call=self._count)
        self.calls: dict[str, int] = {}

    async def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def client(self) -> KmsClient:
        return KmsClient(self.channel)

    def create_key(self, name: str) -> None:
        self.manager.create_key(name, "test-admin")
