"""sealctl: the top layer. The `sealstore` command line and the local-cluster launcher.

It may import the shared library (`sealstore`), the erasure package and the services; nothing
imports it. See docs/architecture.md, "Layers"."""
