"""sealstore: shared library of the sealstore services (config, TLS, errors, RPC plumbing, generated stubs)."""
