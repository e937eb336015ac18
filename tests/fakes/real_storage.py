"""Real storage nodes in this process: services.storage's Node and StorageServicer over drive
folders under a test's tmp_path, reached through the real generated stubs over
tests.fakes.grpc_inprocess.InProcessChannel (no socket, no TLS, no child process: unit layer).

Unlike tests/fakes/storage.py (an in-memory model with fault switches), every call runs the
drive code that production runs: shard files, meta.json, prev.json, the listing index. Faults
are made on the files themselves (`drive(member).root`).

    storage = RealStorage(tmp_path)                 # 4 nodes x 1 drive, 2 data + 2 parity
    result = storage.run(lambda store: ...)         # store: the real ErasureSetClient
"""
from __future__ import annotations

from pathlib import Path

from sealstore.config import SetMember, Topology
from services.storage.drive import Drive
from services.storage.node import Node
from services.storage.servicer import StorageServicer

from tests.fakes.grpc_inprocess import InProcessChannel, QuorumClientOverChannels


class RealStorage(QuorumClientOverChannels):
    default_timeout = 5.0

    def __init__(self, root: Path, nodes: int = 4, drives: int = 1, parity: int = 2, sets: int = 1,
                 deployment_id: str = "real-inprocess"):
        self.root = Path(root)
        self.nodes = [Node(f"node{i}", [self.root / f"node{i}" / f"drive{d}" for d in range(drives)])
                      for i in range(nodes)]
        self.channels = {self.address(i): InProcessChannel(StorageServicer(n)) for i, n in enumerate(self.nodes)}
        every = [SetMember(self.address(i), d) for i in range(nodes) for d in range(drives)]
        if len(every) % sets:
            raise ValueError(f"{len(every)} drives do not split into {sets} sets")
        size = len(every) // sets
        self.topology = Topology(kms="none:0", crypto=(), parity_shards=parity,
                                 storage_sets=tuple(tuple(every[s * size:(s + 1) * size]) for s in range(sets)),
                                 deployment_id=deployment_id)

    @staticmethod
    def address(i: int) -> str:
        return f"real-node-{i}:9000"

    def drive(self, member: int, set_index: int = 0) -> Drive:
        """The drive of member `member` of set `set_index`."""
        m = self.topology.storage_sets[set_index][member]
        return self.nodes[int(m.address.split("-")[-1].split(":")[0])].all_drives[m.drive]
