"""What the flow and the board share, torch-free (standard library + numpy), importing neither ``flow``
nor ``host`` nor ``models``:

* ``engine_io.program_image`` the Program image header (magic, format, sizes, I/O scales) and its CRC32
* ``engine_io.regmap``        the engine's AXI-Lite register map and STATUS codes
* ``engine_io.bundle``        the deploy bundle format and its verifying loader (``flow.bundle`` writes it)
* ``engine_io.files``         file hashing, checksum lists and the atomic swap of a finished folder
* ``engine_io.cache``         the kit's one cache root (``$VQHLS_CACHE``)
* ``engine_io.gxx_build``     the one g++ build of a rendered engine (C-sim library and testbench) and its C ABI

Python 3.8 compatible: it runs on the PYNQ images.
"""
