"""The host side of vqhls: what runs on the board (or beside the C-simulation).

* ``engine_io.regmap``      the engine's AXI-Lite register map (pure Python, imported by the flow too)
* ``host.accelerator`` ``Accelerator.open(bundle, backend="pynq"|"sim")``: load, infer, stream
* ``host.sim``         the sim backend: the bundle's engine C++ compiled with g++, simulated DMA/DDR
* ``host.run``         ``python -m host.run BUNDLE``: test vectors, a dataset, throughput

Nothing here imports torch or the flow (only ``engine_io``, stdlib + numpy; ``host.run``
also imports ``models.data``, numpy only, for its ``--data`` split). This package
file imports nothing: ``import engine_io.regmap`` stays light; ``host.Accelerator`` loads on first use.
"""

__all__ = ["Accelerator", "AcceleratorError", "AcceleratorTimeout", "Backend"]


def __getattr__(name):
    if name in __all__:
        # deferred: host.accelerator loads numpy, engine_io.bundle and the sim backend; `import host.<module>`
        # loads only what that module needs
        from host import accelerator

        return getattr(accelerator, name)
    raise AttributeError(f"module 'host' has no attribute {name!r}")
