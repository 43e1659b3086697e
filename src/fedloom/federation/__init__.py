"""The federation: director, envoys, and what crosses between them (TLS, wire, packages)."""
