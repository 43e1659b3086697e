"""Runtimes: where a flow runs (LocalRuntime on this machine, FederatedRuntime across sites)."""
