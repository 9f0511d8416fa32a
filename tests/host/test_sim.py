"""host.sim: the bundle's engine compiled with g++, driven through the simulated AXI-Lite registers, streams,
DMA and DDR exactly as the board's host drives the hardware (register names from engine_io.regmap)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from engine_io import gxx_build, regmap
from host.sim import SimDevice, SimError, SimTimeout, build_library, engine_sources


def load_call(dev: SimDevice, image: bytes, *, flush: bool = True):
    buf = dev.alloc(len(image))
    buf[:] = np.frombuffer(image, dtype=np.uint8)
    if flush:
        buf.flush()
    dev.write(regmap.PARAMS_LO, buf.physical_address & 0xFFFFFFFF)
    dev.write(regmap.PARAMS_HI, buf.physical_address >> 32)
    dev.write(regmap.N_IMAGES, 0)
    dev.write(regmap.CTRL, regmap.CTRL_AP_START)
    return buf


def run_call(dev: SimDevice, n: int) -> None:
    dev.write(regmap.N_IMAGES, n)
    dev.write(regmap.CTRL, regmap.CTRL_AP_START)


def sizes(bundle) -> tuple[int, int]:
    return int(np.prod(bundle.in_shape)), int(np.prod(bundle.out_shape))


# --------------------------------------------------------------------------- build

def test_library_is_cached_by_config_and_sources(bundle, sim_cache, sim_library):
    assert sim_library.is_file() and sim_library.parent.parent == sim_cache
    assert sim_library.parent.name.startswith(bundle.config_hash + "-")
    mtime = sim_library.stat().st_mtime_ns
    assert build_library(bundle, cache_dir=sim_cache) == sim_library
    assert sim_library.stat().st_mtime_ns == mtime      # not rebuilt
    assert not [p for p in sim_library.parent.iterdir() if p.name.startswith(".")]   # no leftovers


def test_bundle_and_project_are_one_build(bundle, bundle_path, sim_library):
    """The bundle ships the project's rendered engine, testbench and bridge byte for byte, so the flow's
    C-sim build of the project (flow.hls.csim) and the sim backend's build of the bundle share one cache
    entry: one key rule over the same files."""
    project_hls = bundle_path.parent / "hls"
    assert (project_hls / "project.json").is_file(), "flow.build writes its HLS project beside deploy/"
    src = engine_sources(bundle)
    proj = gxx_build.EngineSources(project_hls, bundle.config_hash)
    assert [p.relative_to(src.root) for p in src.files()] == [p.relative_to(proj.root) for p in proj.files()]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(src.files(), proj.files()))
    assert gxx_build.build_key(proj) == gxx_build.build_key(src) == sim_library.parent.name


def test_damaged_cached_library_is_rebuilt_not_loaded(bundle, sim_cache, sim_library, tmp_path):
    """A truncated cached library (dlopen of one can SIGBUS) fails its recorded sha256 and is rebuilt."""
    import hashlib
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(sim_library.parent, cache / sim_library.parent.name)
    lib = cache / sim_library.parent.name / sim_library.name
    sums = lib.parent / gxx_build.SUMS_NAME

    def recorded() -> str:
        return dict(reversed(line.split()) for line in sums.read_text().splitlines())[lib.name]

    good = lib.read_bytes()
    assert recorded() == hashlib.sha256(good).hexdigest()   # recorded at build time
    lib.write_bytes(good[: len(good) // 2])
    assert build_library(bundle, cache_dir=cache) == lib
    rebuilt = lib.read_bytes()
    assert len(rebuilt) > len(good) // 2 and recorded() == hashlib.sha256(rebuilt).hexdigest()
    dev = SimDevice(bundle, cache_dir=cache)   # loads and runs
    dev.close()


def test_missing_compiler_is_one_clear_line(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(SimError, match=r"install g\+\+ \(apt-get install g\+\+\)"):
        SimDevice(bundle, cache_dir=tmp_path)


def test_missing_ap_types_is_one_clear_line(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_AP_TYPES", str(tmp_path))
    with pytest.raises(SimError, match=r"pip install hls4ml \(it ships the ap_types headers\) or set VQHLS_AP_TYPES"):
        SimDevice(bundle, cache_dir=tmp_path)


# --------------------------------------------------------------------------- registers and the load call

def test_load_call_through_registers(device, bundle):
    assert device.read(regmap.CTRL) == regmap.CTRL_AP_IDLE
    assert device.read(regmap.STATUS_CTRL) == 0
    load_call(device, bundle.program_image())
    ctrl = device.read(regmap.CTRL)
    assert ctrl & regmap.CTRL_AP_DONE and ctrl & regmap.CTRL_AP_IDLE and not ctrl & regmap.CTRL_AP_START
    assert not device.read(regmap.CTRL) & regmap.CTRL_AP_DONE          # ap_done is clear-on-read
    assert device.read(regmap.STATUS) == regmap.OK
    assert device.read(regmap.CONFIG_HASH) == regmap.config_hash_u32(bundle.config_hash) == device.engine_config_hash
    assert device.read(regmap.CONFIG_HASH_CTRL) == 1 and device.read(regmap.CONFIG_HASH_CTRL) == 0   # ap_vld COR
    cycles = device.read(regmap.CYCLES_LO) | device.read(regmap.CYCLES_HI) << 32
    assert cycles > 0 and device.read(regmap.CYCLES_CTRL) == 1
    assert device.loaded() == (True, *sizes(bundle))
    assert device.input_queued() == 0 and device.output_available() == 0


def test_real_cycles_not_available_in_csim(device, bundle):
    """REAL_CYCLES (0x48 / 0x4C, ap_vld 0x50) reads all ones, "not available": the engine's counter is Verilog
    and C-simulation runs its C model; nothing is derived from the modelled CYCLES."""
    assert (regmap.REAL_CYCLES_LO, regmap.REAL_CYCLES_HI, regmap.REAL_CYCLES_CTRL) == (0x48, 0x4C, 0x50)
    load_call(device, bundle.program_image())
    real = device.read(regmap.REAL_CYCLES_LO) | device.read(regmap.REAL_CYCLES_HI) << 32
    assert real == (1 << 64) - 1 == regmap.REAL_CYCLES_NA and regmap.real_cycles(real) is None
    assert device.read(regmap.REAL_CYCLES_CTRL) == 1 and device.read(regmap.REAL_CYCLES_CTRL) == 0   # ap_vld COR
    assert device.last_call["real_cycles"] == real and device.last_call["cycles"] > 0


def test_bad_register_offsets(device):
    with pytest.raises(SimError, match="outside the engine's s_axilite segment"):
        device.read(regmap.ADDRESS_RANGE)
    with pytest.raises(SimError):
        device.write(0x11, 1)
    device.write(regmap.STATUS, 123)            # read-only: ignored, as on the hardware
    assert device.read(regmap.STATUS) == 0


def test_a_missing_flush_shows_as_on_the_board(bundle, sim_cache, sim_library):
    image = bundle.program_image()
    with SimDevice(bundle, cache_dir=sim_cache) as dev:       # not coherent: DDR is stale without flush
        load_call(dev, image, flush=False)
        assert dev.read(regmap.STATUS) & 0xFF == regmap.ERR_MAGIC
    with SimDevice(bundle, cache_dir=sim_cache, coherent=True) as dev:
        load_call(dev, image, flush=False)
        assert dev.read(regmap.STATUS) == regmap.OK


def test_corrupted_image_in_ddr_is_err_crc(device, bundle):
    image = bundle.program_image()
    buf = device.alloc(len(image))
    buf[:] = np.frombuffer(image, np.uint8)
    buf.flush()
    off = len(image) - 5
    device.mem_write(buf.physical_address + off, bytes([image[off] ^ 0x40]))
    device.write(regmap.PARAMS_LO, buf.physical_address)
    device.write(regmap.N_IMAGES, 0)
    device.write(regmap.CTRL, regmap.CTRL_AP_START)
    st = device.read(regmap.STATUS)
    assert regmap.decode_status(st) == (regmap.ERR_CRC, None)
    assert device.loaded()[0] is False
    # and a run call after the failed load consumes nothing
    in_b, _ = sizes(bundle)
    device.push_input(bytes(in_b))
    run_call(device, 1)
    assert regmap.decode_status(device.read(regmap.STATUS))[0] == regmap.ERR_NOT_LOADED
    assert device.input_queued() == in_b and device.output_available() == 0


def test_run_call_streams_and_tlast(device, bundle):
    load_call(device, bundle.program_image())
    x, e = bundle.vectors()
    in_b, out_b = sizes(bundle)
    device.push_input(x[:3])
    run_call(device, 3)
    assert device.read(regmap.STATUS) == regmap.OK
    assert device.output_available() == 3 * out_b
    assert device.output_last_positions() == [3 * out_b - 1]        # TLAST on the call's final byte only
    data, last = device.pop_output(10 ** 6, with_last=True)
    assert last and np.array_equal(np.frombuffer(data, np.int8).reshape(e[:3].shape), e[:3])
    assert device.read(regmap.CYCLES_LO) > 0


def test_early_tlast_is_err_tlast_and_blank_outputs(device, bundle):
    load_call(device, bundle.program_image())
    x, e = bundle.vectors()
    in_b, out_b = sizes(bundle)
    device.push_input(x[:1])                     # one image with TLAST, the call expects two
    run_call(device, 2)
    assert regmap.decode_status(device.read(regmap.STATUS))[0] == regmap.ERR_TLAST
    assert device.input_queued() == 0
    out = np.frombuffer(device.pop_output(2 * out_b), np.int8)
    assert out.size == 2 * out_b and not out[out_b:].any()          # the receive still completes
    # the second image's bytes are pushed too late: they stay queued for the next call
    device.push_input(x[1:2])
    assert device.input_queued() == in_b


def test_missing_tlast_is_err_tlast(device, bundle):
    load_call(device, bundle.program_image())
    x, _ = bundle.vectors()
    device.push_input(x[:1], last=False)
    run_call(device, 1)
    assert regmap.decode_status(device.read(regmap.STATUS))[0] == regmap.ERR_TLAST


def test_started_call_waits_for_its_input(device, bundle):
    load_call(device, bundle.program_image())
    x, e = bundle.vectors()
    in_b, out_b = sizes(bundle)
    run_call(device, 2)                          # started before the DMA sends: blocks on the stream
    assert device.busy and device.read(regmap.CTRL) & regmap.CTRL_AP_START
    assert device.waiting_for() == (0, 2 * in_b)
    device.push_input(x[0], last=False)          # two transfers: TLAST only on the second
    assert device.busy
    device.push_input(x[1])
    assert not device.busy and device.read(regmap.CTRL) & regmap.CTRL_AP_DONE
    assert device.read(regmap.STATUS) == regmap.OK
    assert np.array_equal(np.frombuffer(device.pop_output(2 * out_b), np.int8).reshape(e[:2].shape), e[:2])


def test_dma_and_ddr(device, bundle):
    load_call(device, bundle.program_image())
    x, e = bundle.vectors()
    in_b, out_b = sizes(bundle)
    inbuf, outbuf = device.alloc(8 * in_b), device.alloc(8 * out_b)
    for b in (inbuf, outbuf):
        assert b.physical_address % 4096 == 0
    assert inbuf.physical_address != outbuf.physical_address
    assert inbuf[in_b:].physical_address == inbuf.physical_address + in_b      # a view keeps its address
    with pytest.raises(SimError, match="not a device buffer"):
        (inbuf + 1).physical_address
    inbuf[:] = x.reshape(-1)
    inbuf.flush()
    device.dma_recv(outbuf, 8 * out_b)
    with pytest.raises(SimTimeout, match="never started|idle"):
        device.dma_wait(1.0)
    device.dma_send(inbuf, 8 * in_b)
    run_call(device, 8)
    assert device.dma_wait(1.0) == 8 * out_b
    assert not outbuf.any()                                        # the CPU view is stale until invalidate
    outbuf.invalidate()
    assert np.array_equal(outbuf.view(np.int8).reshape(e.shape), e)
    assert device.mem_read(outbuf.physical_address, 4) == outbuf[:4].tobytes()
    with pytest.raises(SimError, match="outside every allocated buffer"):
        device.mem_read(outbuf.physical_address + len(outbuf), 1)
    addr = outbuf.physical_address
    outbuf.freebuffer()
    with pytest.raises(SimError):
        device.mem_read(addr, 1)


def test_receive_shorter_than_the_packet_is_an_error(device, bundle):
    load_call(device, bundle.program_image())
    x, _ = bundle.vectors()
    _, out_b = sizes(bundle)
    out = device.alloc(2 * out_b)
    device.dma_recv(out, out_b)                  # one image's worth, the call sends two
    device.push_input(x[:2])
    run_call(device, 2)
    with pytest.raises(SimError, match="filled before TLAST"):
        device.dma_wait(1.0)


def test_each_device_is_its_own_engine(bundle, sim_cache, sim_library):
    with SimDevice(bundle, cache_dir=sim_cache) as a, SimDevice(bundle, cache_dir=sim_cache) as b:
        load_call(a, bundle.program_image())
        assert a.loaded()[0] and not b.loaded()[0]
        b.push_input(bytes(sizes(bundle)[0]))
        run_call(b, 1)
        assert regmap.decode_status(b.read(regmap.STATUS))[0] == regmap.ERR_NOT_LOADED
    with pytest.raises(SimError, match="closed"):
        a.loaded()


def test_ap_types_override(bundle, tmp_path, monkeypatch):
    from engine_io.gxx_build import ap_types_dir

    real = ap_types_dir()
    monkeypatch.setenv("VQHLS_AP_TYPES", str(real))
    assert ap_types_dir() == real
    assert os.path.isfile(real / "ap_int.h")
