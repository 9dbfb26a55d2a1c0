"""mlinfra: one stack file to a verified, disposable GPU inference deployment.

    from mlinfra import Stack
    stack = Stack.load("mlinfra.toml")
    result = stack.up()

Names are imported lazily so `mlinfra --help` does not pay for them.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Stack": "mlinfra.api",
    "StackSpec": "mlinfra.spec",
    "Aborted": "mlinfra.errors",
    "Compute": "mlinfra.spec",
    "Gcp": "mlinfra.spec",
    "Local": "mlinfra.spec",
    "Serve": "mlinfra.spec",
    "State": "mlinfra.spec",
    "Verify": "mlinfra.spec",
    "MlinfraError": "mlinfra.errors",
    "SpecError": "mlinfra.errors",
    "EngineError": "mlinfra.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlinfra' has no attribute {name!r}")
