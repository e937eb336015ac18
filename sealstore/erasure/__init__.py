"""The erasure layer (L1): everything about spreading stored bytes over the drives of an
erasure set, below the services and above the core library.

- `coder`: Reed-Solomon coding of one stripe (pure);
- `framing`: the checksummed block framing of a shard, shared by the worker and the drives;
- `quorum`: the verdicts over member answers (pure functions over plain values);
- `client`: the gRPC fan-out client of one erasure set, or of several;
- `streams`: shard streams between a process and the members (fan-out writes, stripe reads);
- `heal`: finding and rebuilding bad copies.

Imports the core library (sealstore.*) only, never a service: crypto, heal, the gateway and the
command line use it. Submodules are imported by name (nothing is re-exported here) so that a
process pays for pyeclib only when it codes.
"""
