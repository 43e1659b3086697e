"""LocalRuntime and its backends."""

from fedloom.runtime.local.runtime import LocalRuntime

__all__ = ["LocalRuntime"]
