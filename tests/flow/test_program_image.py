"""The Program image header (format 4, engine_io.program_image): input / output scales and signedness travel
with the image and are checksummed; the host checks (Program.from_bytes, validate_image, the bundle and
the accelerator) and the engine's load call read the one definition."""
from __future__ import annotations

import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "hls"))
from hls_testlib import DEFAULT_CFG, lenet_program  # noqa: E402

from flow.compile.layout import place  # noqa: E402
from flow.compile.program import (  # noqa: E402
    FORMAT_VERSION, HEADER_WORDS, Program, ProgramFormatError, image_crc, seal,
)
from flow.compile.validate import ProgramError, validate_image  # noqa: E402
from engine_io import program_image as pim  # noqa: E402
from engine_io import regmap  # noqa: E402
from host.accelerator import AcceleratorError, check_program_image  # noqa: E402


@pytest.fixture(scope="module")
def prog() -> Program:
    p = place(lenet_program(np.random.default_rng(4)), DEFAULT_CFG)
    p.in_scale, p.out_scale = 1 / 255, 0.043
    return p


def _set(image: bytes, word: int, value: int, fix_crc: bool = True) -> bytes:
    b = bytearray(image)
    b[4 * word:4 * word + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    return seal(b) if fix_crc else bytes(b)


def test_scales_and_signedness_round_trip(prog):
    image = prog.to_bytes()
    again = Program.from_bytes(image)
    assert (again.in_scale, again.out_scale) == (1 / 255, 0.043)            # float64: exact
    assert (again.in_unsigned, again.out_unsigned) == (True, False)
    assert again.in_shape == (8, 8, 1)
    assert again.to_bytes() == image
    hdr = pim.parse_header(image)
    assert (hdr.in_scale, hdr.out_scale, hdr.in_unsigned, hdr.out_unsigned) == (1 / 255, 0.043, True, False)
    assert (hdr.in_shape, hdr.out_shape) == ((8, 8, 1), (1, 1, 10))
    words = struct.unpack_from(f"<{HEADER_WORDS}I", image)
    assert words[1] == FORMAT_VERSION == 4 and HEADER_WORDS == 16
    assert struct.unpack("<d", struct.pack("<2I", words[8], words[9]))[0] == 1 / 255
    assert words[12] == pim.IO_IN_UNSIGNED and words[13:] == (0, 0, 0)
    # the checksum covers everything after word 7: the scales too
    assert words[7] == image_crc(image) == zlib.crc32(image[32:])
    # the validated image gives the same Program, scales included
    got = validate_image(image, DEFAULT_CFG)
    assert (got.in_scale, got.out_scale) == (1 / 255, 0.043) and got.to_bytes() == image


def test_from_bytes_keyword_must_agree(prog):
    image = prog.to_bytes()
    assert Program.from_bytes(image, in_scale=1 / 255).in_scale == 1 / 255
    with pytest.raises(ProgramFormatError, match="in_scale is .*, the caller says 0.5"):
        Program.from_bytes(image, in_scale=0.5)
    assert Program.from_bytes(image, meta={"k": 1}).meta == {"k": 1}
    with pytest.raises(TypeError):
        Program.from_bytes(image, nonsense=1)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_bad_scale_is_refused_when_packing(prog, scale):
    bad = Program(prog.ops, in_scale=scale, out_scale=1.0)
    with pytest.raises(ValueError, match="in_scale must be a positive finite number") as e:
        bad.to_bytes()
    assert "\n" not in str(e.value)


def test_corrupted_scale_or_flag_words(prog):
    image = prog.to_bytes()
    nan_lo, nan_hi = struct.unpack("<2I", struct.pack("<d", math.nan))
    cases = [
        # word, value, fix the CRC, from_bytes matches, validate_image code
        (8, nan_lo, False, "checksum mismatch", regmap.ERR_CRC),       # a flipped scale: the CRC catches it
        (9, nan_hi, True, "in_scale .* not a positive finite number", regmap.ERR_HEADER),
        (11, 0xBFF00000, True, "out_scale .* not a positive finite number", regmap.ERR_HEADER),   # -1.0
        (12, 0, True, "input is signed, the first op's descriptor unsigned", regmap.ERR_IO),
        (12, 3, True, "output is unsigned, the last op's descriptor signed", regmap.ERR_IO),
        (12, 8, True, "io_flags .* only bits 0 and 1", regmap.ERR_IO),
        (14, 1, True, "reserved", regmap.ERR_HEADER),
    ]
    for word, value, fix, msg, code in cases:
        bad = _set(image, word, value, fix)
        with pytest.raises(ProgramFormatError, match=msg) as e:
            Program.from_bytes(bad)
        assert "\n" not in str(e.value)
        with pytest.raises(ProgramError) as e:
            validate_image(bad, DEFAULT_CFG)
        assert (e.value.code, e.value.op) == (code, None), (word, str(e.value))
        with pytest.raises(AcceleratorError):
            check_program_image(bad)


def test_format_3_images_are_refused_with_the_fix(prog):
    old = _set(prog.to_bytes(), 1, 3)
    with pytest.raises(ProgramFormatError, match="format version 3, this kit reads version 4"):
        Program.from_bytes(old)
    with pytest.raises(ProgramError) as e:
        validate_image(old, DEFAULT_CFG)
    assert e.value.code == regmap.ERR_VERSION and "re-export it" in str(e.value)
    with pytest.raises(AcceleratorError, match="format version 3"):
        check_program_image(old, 3)


def test_truncated_and_short_images(prog):
    image = prog.to_bytes()
    for cut in (0, 4, 8, 31, 32, 63, 64, 100, len(image) - 4):
        with pytest.raises(ProgramFormatError) as e:
            Program.from_bytes(image[:cut])
        assert "\n" not in str(e.value)
        with pytest.raises(pim.HeaderError):
            pim.parse_header(image[:cut])


@pytest.mark.csim
def test_engine_checks_the_checksummed_header_words(prog):
    """The engine's load call: the CRC covers the scale words (ERR_CRC for a flipped scale bit) and the
    io_flags must match the first / last op (ERR_IO); the scales themselves are the host's."""
    from flow.hls.csim import CsimEngine, EngineError

    engine = CsimEngine(DEFAULT_CFG)
    image = prog.to_bytes()
    for word, value, fix, code in ((8, 0x12345, False, regmap.ERR_CRC), (12, 0, True, regmap.ERR_IO),
                                   (12, 2 | 1, True, regmap.ERR_IO)):
        with pytest.raises(EngineError) as e:
            engine.load_image(_set(image, word, value, fix), validate=False)
        assert e.value.code == code, (word, str(e.value))
    engine.load_image(image)
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    from flow.compile.program_exec import run_program
    want = (run_program(prog, x).astype(np.int64) & 0xFF).astype(np.uint8).reshape(3, -1)
    assert np.array_equal(engine.run_bytes(x.reshape(3, -1)), want)


@pytest.mark.csim
def test_engine_refuses_arrays_outside_the_image(prog):
    """The hardware's own offset check (ERR_OFFSET): an array that would be read past the image's end,
    behind a valid CRC, never reaches the loads (the C-simulation would read outside its buffer)."""
    from flow.compile.program import DESC_FIELDS, DESC_WORDS
    from flow.hls.csim import CsimEngine, EngineError

    engine = CsimEngine(DEFAULT_CFG)
    image = prog.to_bytes()

    def desc(i, f):
        return HEADER_WORDS + i * DESC_WORDS + DESC_FIELDS.index(f)

    for i, f, value in ((0, "off_weight", len(image) - 8), (0, "off_mult", -4), (2, "off_idx", 1 << 30),
                        (2, "off_codebook", 6), (4, "off_shift", len(image)), (2, "NVEC", 64)):
        bad = _set(image, desc(i, f), value)
        with pytest.raises(EngineError) as e:
            engine.load_image(bad, validate=False)
        assert (e.value.code, e.value.op) in ((regmap.ERR_OFFSET, i), (regmap.ERR_PARAM, i)), (f, str(e.value))
        with pytest.raises(ProgramError):
            engine.load_image(bad)
