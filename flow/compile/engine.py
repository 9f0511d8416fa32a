"""EngineConfig: the parameters of one accelerator build.

One bitstream runs any Program that fits its config: layer shapes are
runtime values read from the op descriptors; these are the compile-time
limits and the array geometry the HLS templates are sized from.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EngineConfig:
    rows: int = 8             # systolic array rows (output pixels in flight)
    cols: int = 8             # systolic array columns (output channels in flight)
    n: int = 2                # PE keeps n of every m weights (n == m: dense mode)
    m: int = 4
    k_max: int = 256          # largest codebook
    d_max: int = 16           # largest codeword length
    act_buf_bytes: int = 16384   # one activation buffer (int8/uint8, NHWC)
    num_bufs: int = 3         # ping, pong, residual
    max_channels: int = 512   # largest C or OC of a layer
    max_kernel: int = 7       # largest KH / KW
    max_ops: int = 64         # longest Program
    param_bytes: int = 4 << 20   # parameter image limit (DDR region for m_axi)
    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 32
    # lookup engine (PQ ops). pq=False builds no lookup unit; the engine rejects PQ ops (ERR_OPCODE).
    pq: bool = True
    pq_v_max: int = 16        # longest subvector (the encoder's distance units are v_max wide)
    pq_k_max: int = 64        # most prototypes per subspace (distances computed in parallel over K)
    pq_subspaces_max: int = 1024   # most subspaces (KH*KW*C / v) of a layer: on-chip prototype rows
    lut_bytes: int = 256 << 10     # on-chip LUT memory (16-bit entries). A layer whose LUT is larger
                                   # still runs: its LUT rows are read from DDR per lookup (streamed)

    def __post_init__(self) -> None:
        if self.n < 1 or self.n > self.m:
            raise ValueError(f"EngineConfig: need 1 <= n <= m, got n={self.n}, m={self.m}")
        for name in ("rows", "cols", "k_max", "d_max", "act_buf_bytes", "num_bufs", "max_channels", "max_kernel", "max_ops"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1")
        for name in ("pq_v_max", "pq_k_max", "pq_subspaces_max", "lut_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1")
        if self.pq_v_max > 64:
            raise ValueError(f"EngineConfig: pq_v_max={self.pq_v_max} > 64 is not supported")
        if self.pq_k_max > 256:
            raise ValueError(f"EngineConfig: pq_k_max={self.pq_k_max} > 256 is not supported (8-bit codes)")
        if self.d_max % self.m:
            raise ValueError(f"EngineConfig: d_max={self.d_max} must be a multiple of m={self.m}")
        if self.d_max > 16:
            raise ValueError("EngineConfig: d_max > 16 is not supported (masks are 16-bit words)")

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        """Stable short hash naming the compiled engine (cache key, CONFIG_HASH register)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
