"""The heal service: heals the erasure sets from inside the cluster (background scanner and
on-demand heals for `sealstore admin heal`), on stored ciphertext only, holding no keys."""
