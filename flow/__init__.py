import os as _os

# torch's OpenMP threads spin while waiting by default; on a 2-core machine with
# any other load that turns a 2 s fine-tuning into minutes. Must be set before
# torch is imported to take effect.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["simulate", "Result", "deploy", "Deployment"]


def __getattr__(name: str):
    # lazy: `import flow.<stage>` must not load the one-call API's stages (quant, compile, boards) with it
    if name in __all__:
        from flow import api   # deferred: flow.api imports numpy and the quant, compile and boards stages

        return getattr(api, name)
    raise AttributeError(f"module 'flow' has no attribute {name!r}")
