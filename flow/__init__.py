import os as _os

# torch's OpenMP threads spin while waiting by default; on a 2-core machine with
# any other load that turns a 2 s fine-tuning into minutes. Must be set before
# torch is imported to take effect.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["simulate", "Result"]


def __getattr__(name: str):
    # lazy: `import flow.compile.program` (the host's bundle loader, on the board without torch) must not
    # pull in torch through the one-call API
    if name in __all__:
        from flow import api

        return getattr(api, name)
    raise AttributeError(f"module 'flow' has no attribute {name!r}")
