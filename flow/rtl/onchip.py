"""Python reference of the engine's on-chip memories after the load call, and of the activation layout.

    st = onchip_state(image, engine)          # what the HLS load call leaves on chip (OnChip)
    for mem, addr, col, data in writes(st):   # the pw_* parameter-port words that produce st
        ...
    words = pack_activation(x, engine, WB, CW)           # {(bank, addr): LW-bit word}
    y = unpack_activation(words, engine, H, W, C, WB, CW)

``onchip_state`` follows hls_templates/engine/top.cpp.j2 ``load_program`` and param_loader.h.j2 step by
step (descriptors into op_words; per op in program order: channel parameters of every non-maxpool op,
with bias / res_mult cleared where the op has none; weights of every *resident* conv op). Memories start
at zero (a fresh engine) and stay zero where the load writes nothing. NOT in the memories after the load:
the weights of streamed (non-resident, ``resident == 0``) conv ops -- the run call burst-loads them one
output-channel tile at a time into the stream region -- and everything of the lookup unit (PQ prototypes
and LUTs are read during the run call), so the PQ memories are not modelled here (zeros after load).
tests/rtl/test_onchip_reference.py checks every memory against the C-sim engine's own statics
(flow.hls.csim.CsimEngine.onchip_memories).

Memory layouts are the spec's (/docs/rtl.md "The engine in RTL" and memories.h.j2):
  op_words [max_ops, 64] uint32; vidx [vmem_entries] uint32 (index); vmask [vmem_entries] uint32 (d_max-bit
  mask); cb [cb_rows, d_max] int8 (byte i = element i); dmem [dmem_words, lanes] int8 (byte l = lane l);
  ch_bias / ch_mult / ch_res_mult [cols, ch_rows] int32 and ch_shift [cols, ch_rows] uint8, i.e. ch_mem[c][row]
  (output channel ch_base + (row - ch_base) * cols + c of the op that wrote it).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterator, Mapping

import numpy as np

from engine_io.program_image import DESC_FIELDS, DESC_WORDS, HEADER_WORDS, MAGIC, WORD
from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, MAXPOOL, PQ

# pw_mem codes of the parameter write port (the spec's "Parameter write port")
PW_OPW, PW_VIDX, PW_VMASK, PW_CB, PW_DMEM, PW_CH_BIAS, PW_CH_MULT, PW_CH_SHIFT, PW_CH_RESMULT = range(9)
PW_MEMS = {"op_words": PW_OPW, "vidx": PW_VIDX, "vmask": PW_VMASK, "cb": PW_CB, "dmem": PW_DMEM,
           "ch_bias": PW_CH_BIAS, "ch_mult": PW_CH_MULT, "ch_shift": PW_CH_SHIFT, "ch_res_mult": PW_CH_RESMULT}
_F = {f: i for i, f in enumerate(DESC_FIELDS)}


class LoadError(ValueError):
    """The image is one the engine's load call refuses (it would not leave a complete state)."""


@dataclass
class OnChip:
    """The engine's on-chip parameter memories after the load call (shapes in the module docstring)."""
    op_words: np.ndarray     # [max_ops, DESC_WORDS] uint32: descriptor word f of op i
    vidx: np.ndarray         # [vmem_entries] uint32: codeword index
    vmask: np.ndarray        # [vmem_entries] uint32: N:M mask, d_max bits
    cb: np.ndarray           # [cb_rows, d_max] int8: codebook rows
    dmem: np.ndarray         # [dmem_words, lanes] int8: dense weight words
    ch_bias: np.ndarray      # [cols, ch_rows] int32
    ch_mult: np.ndarray      # [cols, ch_rows] int32
    ch_shift: np.ndarray     # [cols, ch_rows] uint8 (5 bits)
    ch_res_mult: np.ndarray  # [cols, ch_rows] int32

    def memories(self) -> dict[str, np.ndarray]:
        """name -> array, in pw_mem order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def empty_state(engine: EngineConfig) -> OnChip:
    """All memories zero (a fresh engine)."""
    ch = (engine.cols, engine.ch_rows)
    return OnChip(op_words=np.zeros((engine.max_ops, DESC_WORDS), np.uint32),
                  vidx=np.zeros(engine.vmem_entries, np.uint32), vmask=np.zeros(engine.vmem_entries, np.uint32),
                  cb=np.zeros((engine.cb_rows, engine.d_max), np.int8),
                  dmem=np.zeros((engine.dmem_words, engine.lanes), np.int8),
                  ch_bias=np.zeros(ch, np.int32), ch_mult=np.zeros(ch, np.int32), ch_shift=np.zeros(ch, np.uint8),
                  ch_res_mult=np.zeros(ch, np.int32))


def _header(image: bytes, engine: EngineConfig) -> tuple[int, np.ndarray]:
    """(n_ops, descriptors [n_ops, DESC_WORDS] int32) of a program image, with the load call's header checks."""
    if len(image) < 4 * HEADER_WORDS or len(image) % 4:
        raise LoadError(f"image of {len(image)} bytes: not a whole header / whole words")
    hdr = np.frombuffer(image, "<u4", HEADER_WORDS)
    n_ops = int(hdr[WORD["n_ops"]])
    if int(hdr[WORD["magic"]]) != MAGIC or int(hdr[WORD["desc_words"]]) != DESC_WORDS:
        raise LoadError("bad magic or descriptor size")
    if not 1 <= n_ops <= engine.max_ops or len(image) < 4 * (HEADER_WORDS + n_ops * DESC_WORDS):
        raise LoadError(f"n_ops={n_ops}: outside 1..max_ops={engine.max_ops} or past the image")
    descs = np.frombuffer(image, "<i4", n_ops * DESC_WORDS, 4 * HEADER_WORDS).reshape(n_ops, DESC_WORDS)
    return n_ops, descs


def _array(image: bytes, off: int, count: int, dtype: str) -> np.ndarray:
    """``count`` values of ``dtype`` at byte offset ``off`` of the image."""
    size = np.dtype(dtype).itemsize
    if off < 0 or off + count * size > len(image):
        raise LoadError(f"array at byte {off} ({count} x {dtype}) runs past the {len(image)}-byte image")
    return np.frombuffer(image, dtype, count, off)


def _load_chan(st: OnChip, name: str, values: np.ndarray | None, count: int, base: int, engine: EngineConfig) -> None:
    """param_loader load_chan_array / clear_chan_field: channel i to ch_mem[i % cols][base + i // cols]
    (values None: clear to 0)."""
    i = np.arange(count)
    col, row = i % engine.cols, base + i // engine.cols
    if values is None:   # clear_chan_field: rows past ch_rows are skipped (no error)
        keep = row < engine.ch_rows
        getattr(st, name)[col[keep], row[keep]] = 0
        return
    if count and row[-1] >= engine.ch_rows:
        raise LoadError(f"{name}: channel rows {base}..{row[-1]} past ch_rows={engine.ch_rows}")
    if name == "ch_shift":
        v = values.astype(np.int64)
        if np.any((v < 1) | (v > 31)):
            raise LoadError("shift outside 1..31 (ERR_PARAM)")
        st.ch_shift[col, row] = v.astype(np.uint8)
    else:
        getattr(st, name)[col, row] = values.astype(np.int32)


def _load_weights(st: OnChip, image: bytes, op: dict, engine: EngineConfig) -> None:
    """param_loader load_weights(op, ot=0, oc_count=OC): a resident conv op's weights."""
    taps = op["OC"] * op["KH"] * op["KW"]
    if op["wfmt"] == DENSE:
        C, CW, L = op["C"], op["CW"], engine.lanes
        w = _array(image, op["off_weight"], taps * C, "i1").reshape(taps, C)
        words = np.zeros((taps, CW * L), np.int8)      # lanes past C zero; CW words per tap
        words[:, :C] = w
        a0, n = op["w_base"], taps * CW
        if a0 + n > engine.dmem_words:
            raise LoadError(f"dense weights at words {a0}..{a0 + n - 1} past dmem_words={engine.dmem_words}")
        st.dmem[a0:a0 + n] = words.reshape(n, L)
        return
    if op["wfmt"] not in (CODEBOOK, CODEBOOK_SHARED):
        raise LoadError(f"conv weight format {op['wfmt']}")
    count = taps * op["NVEC"]
    # a shared-mask op (row-mux engines): one mask per (oc tile, tap, vector), NOT*KH*KW*NVEC entries from v_base
    mcount = op["NOT"] * op["KH"] * op["KW"] * op["NVEC"] if op["wfmt"] == CODEBOOK_SHARED else count
    k, d, a0 = op["k"], op["d"], op["v_base"]
    if a0 + count > engine.vmem_entries:
        raise LoadError(f"vmem entries {a0}..{a0 + count - 1} past vmem_entries={engine.vmem_entries}")
    idx = _array(image, op["off_idx"], count, "<u2").astype(np.uint32)
    if np.any(idx >= k):
        raise LoadError("codeword index >= k (ERR_PARAM)")
    st.vidx[a0:a0 + count] = idx
    st.vmask[a0:a0 + mcount] = _array(image, op["off_mask"], mcount, "<u2").astype(np.uint32) & ((1 << d) - 1)
    cb0 = op["cb_base"]
    if cb0 + k > engine.cb_rows:
        raise LoadError(f"codebook rows {cb0}..{cb0 + k - 1} past cb_rows={engine.cb_rows}")
    st.cb[cb0:cb0 + k] = 0                               # a row is written whole: bytes past d are 0
    st.cb[cb0:cb0 + k, :d] = _array(image, op["off_codebook"], k * d, "i1").reshape(k, d)


def op_fields(image: bytes, engine: EngineConfig) -> list[dict[str, int]]:
    """The descriptor fields of every op of a program image (field -> int)."""
    _, descs = _header(image, engine)
    return [{f: int(row[i]) for f, i in _F.items()} for row in descs]


def onchip_state(image: bytes, engine: EngineConfig) -> OnChip:
    """What every on-chip parameter memory holds after the HLS load call of ``image`` (a placed Program
    image, ``prepare(program, engine).to_bytes()``) on a fresh ``engine``: zeros where the load writes
    nothing. Streamed (non-resident) conv ops' weights and PQ prototypes / LUTs are NOT in the memories
    after the load (see ``resident``). Raises LoadError where the load call would fail (header, channel
    rows, weight addresses, index >= k, shift outside 1..31); the CRC and the descriptor checks
    (check_op) are the host validator's (flow.compile.validate), not repeated here."""
    image = bytes(image)
    n_ops, descs = _header(image, engine)
    st = empty_state(engine)
    st.op_words[:n_ops] = descs.view(np.uint32)
    for op in op_fields(image, engine):
        opc = op["opcode"]
        if opc not in (CONV, MAXPOOL, AVGPOOL, PQ):
            raise LoadError(f"opcode {opc} (ERR_OPCODE)")
        if opc != MAXPOOL:                               # load_channels
            mac = opc in (CONV, PQ)
            count, base = op["OC"], op["ch_base"]

            def chan(off: int) -> np.ndarray:
                return _array(image, off, count, "<i4")

            _load_chan(st, "ch_bias", chan(op["off_bias"]) if mac and op["off_bias"] != 0 else None,
                       count, base, engine)
            _load_chan(st, "ch_mult", chan(op["off_mult"]), count, base, engine)
            _load_chan(st, "ch_shift", chan(op["off_shift"]), count, base, engine)
            _load_chan(st, "ch_res_mult", chan(op["off_res_mult"]) if mac and op["res_buf"] >= 0 else None,
                       count, base, engine)
        if opc == CONV and op["resident"]:
            _load_weights(st, image, op, engine)
    return st


def resident(image: bytes, engine: EngineConfig) -> list[int]:
    """Indices of the ops whose weights the load call does NOT put on chip (empty: all resident): conv ops
    placed with ``resident == 0`` (their weights are burst-loaded one oc tile at a time during the run
    call), and every PQ op (prototypes and LUT are read during the run call)."""
    return [i for i, op in enumerate(op_fields(bytes(image), engine))
            if (op["opcode"] == CONV and not op["resident"]) or op["opcode"] == PQ]


def _bytes_word(row: np.ndarray) -> int:
    """A row of int8 / uint8 bytes as one little-endian int (byte i at bits 8i+7..8i)."""
    return int.from_bytes(np.ascontiguousarray(row).astype(np.uint8).tobytes(), "little")


def writes(state: OnChip) -> Iterator[tuple[int, int, int, int]]:
    """(pw_mem, pw_addr, pw_col, pw_data) parameter-port writes that turn zeroed memories into ``state``:
    only the non-zero entries, memory by memory in pw_mem order, addresses ascending. Data in the spec's
    bit layout, unsigned: op word (32 bits), index, mask, codebook row / dmem word (byte i at bits
    8i+7..8i), channel field (32 bits two's complement; shift 5 bits). pw_col is 0 except for ch fields."""
    ow = state.op_words.reshape(-1)
    for a in np.flatnonzero(ow):
        yield PW_OPW, int(a), 0, int(ow[a])
    for mem, arr in ((PW_VIDX, state.vidx), (PW_VMASK, state.vmask)):
        for a in np.flatnonzero(arr):
            yield mem, int(a), 0, int(arr[a])
    for mem, arr in ((PW_CB, state.cb), (PW_DMEM, state.dmem)):
        for a in np.flatnonzero(np.any(arr != 0, axis=1)):
            yield mem, int(a), 0, _bytes_word(arr[a])
    for name, mem in (("ch_bias", PW_CH_BIAS), ("ch_mult", PW_CH_MULT), ("ch_shift", PW_CH_SHIFT),
                      ("ch_res_mult", PW_CH_RESMULT)):
        arr = getattr(state, name)
        for c, r in zip(*np.nonzero(arr.T)[::-1]):    # row-major over (row, col): rows ascending
            yield mem, int(r), int(c), int(arr[c, r]) & 0xFFFFFFFF


def apply_writes(engine: EngineConfig, ws) -> OnChip:
    """The inverse of ``writes``: the memories after the port writes ``ws`` into zeroed memories (what an
    RTL core's memories should hold after the loader's writes; to compare with ``onchip_state``)."""
    st = empty_state(engine)
    ow = st.op_words.reshape(-1)
    for mem, addr, col, data in ws:
        if mem == PW_OPW:
            ow[addr] = data & 0xFFFFFFFF
        elif mem == PW_VIDX:
            st.vidx[addr] = data
        elif mem == PW_VMASK:
            st.vmask[addr] = data & ((1 << engine.d_max) - 1)
        elif mem in (PW_CB, PW_DMEM):
            arr = st.cb if mem == PW_CB else st.dmem
            arr[addr] = np.frombuffer(int(data).to_bytes(arr.shape[1] + 8, "little")[:arr.shape[1]], np.int8)
        else:
            name = {PW_CH_BIAS: "ch_bias", PW_CH_MULT: "ch_mult", PW_CH_SHIFT: "ch_shift",
                    PW_CH_RESMULT: "ch_res_mult"}[mem]
            arr = getattr(st, name)
            arr[col, addr] = (data & 31) if mem == PW_CH_SHIFT else \
                np.array(data & 0xFFFFFFFF, np.uint32).view(np.int32)
    return st


# ---------------------------------------------------------------------------- activation layout
def act_address(engine: EngineConfig, ih: int, iw: int, j: int, WB: int, CW: int) -> tuple[int, int]:
    """(bank, word address) of pixel (ih, iw), channel word j (docs/engine.md "Activation layout and banking")."""
    B = engine.act_banks
    return iw % B, (ih * WB + iw // B) * CW + j


def pack_activation(x: np.ndarray, engine: EngineConfig, WB: int, CW: int) -> dict[tuple[int, int], int]:
    """x [H, W, C] (int8 or uint8 codes) -> {(bank, addr): word}: every word of the tensor (H*W*CW of them,
    zeros included), a word = lanes bytes, byte l (bits 8l+7..8l) = channel j*lanes + l, lanes past C zero."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"pack_activation: x must be [H, W, C], got shape {list(x.shape)}")
    H, W, C = x.shape
    L = engine.lanes
    if CW * L < C or WB * engine.act_banks < W:
        raise ValueError(f"pack_activation: CW={CW} / WB={WB} too small for C={C} / W={W}")
    padded = np.zeros((H, W, CW * L), np.uint8)
    padded[:, :, :C] = (x.astype(np.int64) & 0xFF).astype(np.uint8)
    out: dict[tuple[int, int], int] = {}
    for ih in range(H):
        for iw in range(W):
            for j in range(CW):
                out[act_address(engine, ih, iw, j, WB, CW)] = int.from_bytes(
                    padded[ih, iw, j * L:(j + 1) * L].tobytes(), "little")
    return out


def unpack_activation(words: Mapping[tuple[int, int], int] | Callable[[int, int], int], engine: EngineConfig,
                      H: int, W: int, C: int, WB: int, CW: int, dtype=np.uint8) -> np.ndarray:
    """The tensor [H, W, C] held in banked words (a dict {(bank, addr): word} -- missing words read 0 -- or a
    callable (bank, addr) -> word); bytes as ``dtype`` (uint8, or int8 for signed codes)."""
    get = words if callable(words) else (lambda b, a: words.get((b, a), 0))
    L = engine.lanes
    y = np.zeros((H, W, CW * L), np.uint8)
    for ih in range(H):
        for iw in range(W):
            for j in range(CW):
                w = int(get(*act_address(engine, ih, iw, j, WB, CW)))
                y[ih, iw, j * L:(j + 1) * L] = np.frombuffer(w.to_bytes(L + 8, "little")[:L], np.uint8)
    return y[:, :, :C].view(np.dtype(dtype))


__all__ = ["OnChip", "LoadError", "PW_MEMS", "empty_state", "onchip_state", "op_fields", "resident", "writes",
           "apply_writes", "act_address", "pack_activation", "unpack_activation"]
