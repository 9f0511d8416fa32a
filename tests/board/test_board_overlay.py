"""The derived .hwh through pynq's real parser and Overlay, the driver binding, and the test doubles
themselves (register offsets against pynq.lib.dma and the .hwh; the DDR is not coherent)."""
from __future__ import annotations

import inspect
import re

import numpy as np
import pynq
import pynq.lib.dma
import pytest
from pynqmetadata.frontends import Metadata
from pynqmetadata.views.runtime import RuntimeMetadataParser

from board_doubles import DMA_REGISTER_NAMES, MM2S, REPO, S2MM, derive_hwh
from engine_io import regmap
from engine_io import hwh
from host.pynq_backend import ENGINE_CELL, ENGINE_VLNV_PREFIX, VqhlsEngineDriver


def test_engine_names_match_the_flow():
    """The backend's copies of the flow's IP names (the flow is not importable on the board)."""
    import ast


    src = (REPO / "flow" / "hls" / "vendor.py").read_text()
    consts = {}
    for node in ast.parse(src).body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)):
            consts[node.targets[0].id] = node.value.value
    # the VLNV comes from engine_io.hwh on both sides (the flow's vendor.py imports it), with the config hash
    assert "from engine_io.hwh import" in src and "engine_vlnv" in src
    assert ENGINE_VLNV_PREFIX == f"{hwh.IP_VENDOR}:{hwh.IP_LIBRARY}:{hwh.IP_NAME_PREFIX}"
    assert hwh.engine_vlnv("0123abcd") == ENGINE_VLNV_PREFIX + "0123abcd:" + hwh.IP_VERSION
    assert ENGINE_CELL == consts["ENGINE_CELL"] == derive_hwh.ENGINE_CELL
    assert derive_hwh.DMA_CELL == consts["DMA_CELL"]


def test_derived_hwh_parses_with_pynqmetadata(tmp_path):
    path = derive_hwh.write(tmp_path / "vqhls.hwh")
    ip = RuntimeMetadataParser(Metadata(input=path)).ip_dict
    eng, dma = ip[ENGINE_CELL], ip["axi_dma_0"]
    assert eng["type"] == hwh.engine_vlnv(derive_hwh.DEFAULT_HASH) == "vqhls:vqhls:vqhls_engine_0123abcd:1.0"
    assert eng["phys_addr"] == 0x43C00000 and eng["addr_range"] >= regmap.ADDRESS_RANGE
    assert dma["type"] == "xilinx.com:ip:axi_dma:7.1" and dma["phys_addr"] == 0x40400000
    p = dma["parameters"]
    assert (p["c_include_sg"], p["c_sg_length_width"], p["c_m_axis_mm2s_tdata_width"],
            p["c_s_axis_s2mm_tdata_width"]) == ("0", "26", "8", "8")
    assert dma["interrupts"] == {} and eng["interrupts"] == {}
    regs = {n: r["address_offset"] for n, r in eng["registers"].items()}
    assert regs["CTRL"] == regmap.CTRL and regs["n_images"] == regmap.N_IMAGES
    assert regs["params_1"] == regmap.PARAMS_LO and regs["params_2"] == regmap.PARAMS_HI
    assert regs["config_hash"] == regmap.CONFIG_HASH and regs["config_hash_ctrl"] == regmap.CONFIG_HASH_CTRL
    assert regs["cycles_1"] == regmap.CYCLES_LO and regs["cycles_2"] == regmap.CYCLES_HI
    assert regs["status"] == regmap.STATUS and regs["status_ctrl"] == regmap.STATUS_CTRL
    # the measured cycles (REAL_CYCLES) after STATUS, as Vitis lays out the top's last argument: 0x48 / 0x4C,
    # ap_vld 0x50, and they are not the modelled CYCLES words
    assert (regs["real_cycles_1"], regs["real_cycles_2"], regs["real_cycles_ctrl"]) == (0x48, 0x4C, 0x50)
    assert (regmap.REAL_CYCLES_LO, regmap.REAL_CYCLES_HI, regmap.REAL_CYCLES_CTRL) == (0x48, 0x4C, 0x50)
    assert "resize" not in path.read_text()


def test_dma_model_offsets_match_pynq_and_the_hwh(tmp_path):
    """The double's AXI DMA register offsets are the .hwh's (PG021 names) and the ones pynq.lib.dma uses."""
    ip = RuntimeMetadataParser(Metadata(input=derive_hwh.write(tmp_path / "vqhls.hwh"))).ip_dict
    hwh = {n: r["address_offset"] for n, r in ip["axi_dma_0"]["registers"].items()}
    for name, off in DMA_REGISTER_NAMES.items():
        assert hwh[name] == off, name
    src = inspect.getsource(pynq.lib.dma._SDMAChannel)
    assert "self._offset = 0x30" in src and "self._offset = 0\n" in src           # S2MM / MM2S blocks
    for reg in ("+ 4", "+ 0x18", "+ 0x1C", "+ 0x28"):                            # DMASR, SA/DA, MSB, LENGTH
        assert f"self._offset {reg}" in src
    assert (MM2S, S2MM) == (0x00, 0x30)


def test_overlay_binds_the_engine_driver_and_the_dma(overlay, board_bundle):
    assert overlay.is_loaded()
    eng = overlay.vqhls_engine_0
    assert isinstance(eng, VqhlsEngineDriver) and eng.bindto == [hwh.engine_vlnv(board_bundle.config_hash)]
    assert overlay.ip_dict[ENGINE_CELL]["type"] == hwh.engine_vlnv(board_bundle.config_hash)
    assert type(overlay.axi_dma_0) is pynq.lib.dma.DMA
    assert overlay.axi_dma_0.sendchannel is not None and overlay.axi_dma_0.recvchannel is not None
    assert eng.regmap_mismatches() == []
    # named access through the driver reaches the simulated engine
    assert eng.read_reg("CTRL") & regmap.CTRL_AP_IDLE
    eng.write_reg("N_IMAGES", 3)
    eng.write_reg("PARAMS", 0x1_2345_6780)
    assert eng.read_reg("PARAMS_LO") == 0x2345_6780 and eng.read_reg("PARAMS_HI") == 1
    # pynq's RegisterMap, built from the .hwh's register list, reaches the same words
    rm = eng.register_map
    assert rm.n_images.access == "write-only" and int(rm.CTRL.AP_IDLE) == 1
    assert int(rm.status) == eng.read_reg("STATUS") and int(rm.config_hash) == eng.read_reg("CONFIG_HASH")
    rm.n_images = 5                                          # a write through pynq's RegisterMap
    assert sim_device_regs(eng)[regmap.N_IMAGES] == 5
    with pytest.raises(Exception, match="read-only"):
        eng.write_reg("STATUS", 1)
    with pytest.raises(Exception, match="write-only"):
        eng.read_reg("N_IMAGES")
    with pytest.raises(KeyError):
        eng.read_reg("NOPE")


def sim_device_regs(eng) -> dict:
    """The simulated engine's input registers, read behind pynq's back."""
    return eng.device.sim._in_regs


def test_pynq_buffers_live_in_non_coherent_ddr(pynq_device, sim_device):
    buf = pynq.allocate((64,), np.uint8, target=pynq_device)
    assert isinstance(buf, pynq.buffer.PynqBuffer) and buf.physical_address % 4096 == 0
    buf[:] = np.arange(64, dtype=np.uint8)
    assert sim_device.mem_read(buf.physical_address, 64) == bytes(64)          # still in the CPU's cache
    buf.flush()
    assert sim_device.mem_read(buf.physical_address, 64) == bytes(range(64))
    sim_device.mem_write(buf.physical_address + 8, b"\xff\xee")
    assert buf[8] == 8                                                          # stale until invalidated
    buf.invalidate()
    assert (buf[8], buf[9]) == (0xFF, 0xEE)


def test_the_double_refuses_addresses_outside_the_hwh(overlay, pynq_device):
    mmio = pynq.MMIO(0x41000000, 0x100, device=pynq_device)
    with pytest.raises(RuntimeError, match=re.escape("no IP at 0x41000000")):
        mmio.read(0)


def test_real_dma_driver_moves_bytes_through_the_engine_stream(overlay, pynq_device, sim_device):
    """pynq.lib.dma.DMA's own transfer()/wait() against the AXI DMA model: MM2S into the engine's input
    FIFO (TLAST on the last byte), S2MM out of its output FIFO."""
    dma = overlay.axi_dma_0
    src = pynq.allocate((16,), np.uint8, target=pynq_device)
    src[:] = np.arange(16, dtype=np.uint8)
    dma.sendchannel.transfer(src)                                    # flushes, then SA / LENGTH
    assert sim_device.input_queued() == 16
    assert not dma.sendchannel.idle                                  # nothing read the stream yet
    sim_device.clear_streams()
    assert dma.sendchannel.idle
    dma.sendchannel.wait()
    dst = pynq.allocate((8,), np.uint8, target=pynq_device)
    sim_device._out += bytes(range(100, 108))                        # engine output with TLAST on its last byte
    sim_device._out_last.append(7)
    dma.recvchannel.transfer(dst)
    dma.recvchannel.wait()                                           # invalidates dst
    assert list(dst) == list(range(100, 108)) and dma.recvchannel.transferred == 8
