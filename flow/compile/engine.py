"""EngineConfig: the parameters of one accelerator build.

One bitstream runs any Program that fits its config: layer shapes are
runtime values read from the op descriptors; these are the compile-time
limits, the array geometry and the on-chip memory sizes the HLS templates are
sized from. ``EngineConfig()`` is the PYNQ-Z2 build (``flow.boards.sizing.config_for_board("pynq-z2")``
returns it after checking it against the resource model).

Geometry (docs/engine.md has the full picture):

* the array is ``rows`` x ``cols`` processing elements. Row r takes output
  pixel ``ow0 + r`` of one output row (a *pixel group* is ``rows`` consecutive
  output columns), column c takes output channel ``oc0 + c``;
* every cycle each row receives one activation word of ``lanes`` channels
  (channels ``c0 .. c0+lanes-1`` of one input pixel) and each PE multiplies the
  ``slots = lanes * n / m`` weights it holds (n of every m) with the lanes its
  m:1 muxes select; a dense build (``n == m``) has no muxes;
* activations live in ``num_bufs`` buffers of ``act_banks`` banks of
  ``lanes``-byte words, banked by input column (``iw mod act_banks``), so the
  ``rows`` pixels of a group (``rows * stride`` consecutive input columns)
  always hit distinct banks: no data-dependent bank conflict for
  ``stride <= max_stride``;
* parameters are copied on chip by the load call: ``vmem_entries`` codeword
  index + mask entries, ``cb_rows`` codebook rows of ``d_max`` bytes,
  ``dmem_words`` dense weight words of ``lanes`` bytes, ``ch_rows`` rows of
  ``cols`` channel parameters (bias, mult, shift, res_mult).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@dataclass(frozen=True)
class EngineConfig:
    rows: int = 2             # R: output pixels in flight (PYNQ-Z2: the most that fit at the HIGH end of flow.boards.resource_model)
    cols: int = 8             # C: output channels in flight (one requantization lane each)
    lanes: int = 8            # L: input channels per cycle (bytes of one activation word)
    n: int = 2                # a PE keeps n of every m weights (n == m: dense build, no muxes)
    m: int = 4
    k_max: int = 256          # largest codebook
    d_max: int = 8            # largest codeword length (d divides lanes or lanes divides d)
    max_stride: int = 2       # largest conv stride the banked activation buffers serve at II=1
    act_buf_bytes: int = 65536   # one activation buffer (act_banks x bank words x lanes bytes)
    num_bufs: int = 3         # ping, pong, residual
    acc_groups: int = 32      # pixel groups per accumulator tile (x2: ping-pong)
    vmem_entries: int = 36864    # on-chip codeword index + mask entries (one per d-vector)
    cb_rows: int = 5120       # on-chip codebook rows (d_max bytes each), all layers together
    dmem_words: int = 2048    # on-chip dense weight words (lanes bytes each)
    ch_rows: int = 256        # on-chip channel-parameter rows (cols channels each)
    dsp_rows: int = 2         # array rows whose multipliers bind to DSP48E1 (the others to LUTs)
    max_channels: int = 512   # largest C or OC of a layer
    max_kernel: int = 7       # largest KH / KW
    max_ops: int = 32         # longest Program (ResNet20 is 23 ops)
    param_bytes: int = 4 << 20   # parameter image limit (DDR region for m_axi)
    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 32
    # lookup engine (PQ ops). pq=False builds no lookup unit; PQ ops are then rejected.
    pq: bool = False          # PYNQ-Z2: a lookup unit does not fit at the high end of the resource model
    pq_v_max: int = 9         # longest subvector (the encoder takes one element per cycle)
    pq_k_max: int = 16        # most prototypes per subspace (K distance units in parallel)
    pq_subspaces_max: int = 64   # most subspaces (KH*KW*C / v) of a layer: on-chip prototype rows
    lut_bytes: int = 32768    # on-chip LUT memory (16-bit entries). A larger LUT streams its rows from DDR
    # row-mux array (sparse builds): the m:1 selection happens once per array row for the whole column
    # tile (the union of the tile's masks: one shared N:M pattern per input position for shared-mask
    # layers), then the compacted lanes are broadcast to the columns; the PEs have no mux (docs/engine.md)
    row_mux: bool = False

    def __post_init__(self) -> None:
        if self.n < 1 or self.n > self.m:
            raise ValueError(f"EngineConfig: need 1 <= n <= m, got n={self.n}, m={self.m}")
        for name in ("rows", "cols", "lanes", "k_max", "d_max", "max_stride", "act_buf_bytes", "num_bufs",
                     "acc_groups", "vmem_entries", "cb_rows", "dmem_words", "ch_rows", "max_channels",
                     "max_kernel", "max_ops", "pq_v_max", "pq_k_max", "pq_subspaces_max", "lut_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dsp_rows <= self.rows:
            raise ValueError(f"EngineConfig: dsp_rows={self.dsp_rows} must be in 0..rows={self.rows}")
        if self.lanes % self.m:
            raise ValueError(f"EngineConfig: lanes={self.lanes} must be a multiple of m={self.m} "
                             "(a PE's m:1 muxes cover whole groups of m lanes)")
        if self.cols != self.lanes:
            raise ValueError(f"EngineConfig: cols={self.cols} must equal lanes={self.lanes} "
                             "(an output-channel tile is written as one activation word)")
        if self.d_max % self.m:
            raise ValueError(f"EngineConfig: d_max={self.d_max} must be a multiple of m={self.m}")
        if self.d_max % self.lanes and self.lanes % self.d_max:
            raise ValueError(f"EngineConfig: d_max={self.d_max} and lanes={self.lanes}: one must divide the other")
        if self.d_max > 16:
            raise ValueError("EngineConfig: d_max > 16 is not supported (masks are at most 16 bits)")
        if self.pq_v_max > 64:
            raise ValueError(f"EngineConfig: pq_v_max={self.pq_v_max} > 64 is not supported")
        if self.pq_k_max > 256:
            raise ValueError(f"EngineConfig: pq_k_max={self.pq_k_max} > 256 is not supported (8-bit codes)")
        if self.row_mux and self.n == self.m:
            raise ValueError("EngineConfig: row_mux needs a sparse build (n < m); a dense build has no muxes")
        if self.act_buf_bytes % (self.act_banks * self.lanes):
            raise ValueError(f"EngineConfig: act_buf_bytes={self.act_buf_bytes} must be a multiple of "
                             f"act_banks x lanes = {self.act_banks * self.lanes}")

    # ---- derived geometry --------------------------------------------------
    @property
    def act_banks(self) -> int:
        """Banks of an activation buffer: a power of two >= rows * max_stride."""
        return _pow2_at_least(self.rows * self.max_stride)

    @property
    def bank_words(self) -> int:
        """Words (lanes bytes each) per activation bank."""
        return self.act_buf_bytes // (self.act_banks * self.lanes)

    @property
    def slots(self) -> int:
        """Multipliers per PE: n of every m of its lanes."""
        return self.lanes * self.n // self.m

    @property
    def multipliers(self) -> int:
        """Multipliers of the array (rows x cols x slots)."""
        return self.rows * self.cols * self.slots

    @property
    def dense(self) -> bool:
        """A dense build: plain PEs without muxes."""
        return self.n == self.m

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        """Stable short hash naming the compiled engine (cache key, CONFIG_HASH register)."""
        d = self.to_dict()
        if not d["row_mux"]:     # builds without the row-mux array keep the hash they had before the option
            del d["row_mux"]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

