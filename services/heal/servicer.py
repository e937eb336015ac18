"""HealService: StartHeal, GetHeal, ScannerStatus (admin only, sealstore/authz.py)."""
from __future__ import annotations

from sealstore import errors
from sealstore.v1 import heal_pb2, heal_pb2_grpc

from services.heal.healer import Healer


class HealServicer(heal_pb2_grpc.HealServiceServicer):
    def __init__(self, healer: Healer):
        self.healer = healer

    async def StartHeal(self, request: heal_pb2.StartHealRequest, context) -> heal_pb2.HealRun:
        if request.rate < 0:
            raise errors.InvalidArgument("rate must be >= 0")
        run = self.healer.start(bucket=request.bucket, dry_run=request.dry_run, quick=request.quick,
                                rate=request.rate, origin="admin")
        return run.to_proto()

    async def GetHeal(self, request: heal_pb2.GetHealRequest, context) -> heal_pb2.HealRun:
        run = self.healer.get(request.id)
        if run is None:
            raise errors.InvalidArgument(f"no heal {request.id!r} (only the last runs are kept)" if request.id
                                         else "no heal has run yet")
        return run.to_proto()

    async def ScannerStatus(self, request, context) -> heal_pb2.ScannerStatusResponse:
        return self.healer.scanner_status()
