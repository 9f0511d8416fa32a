"""host.pynq_backend on the real pynq code (Overlay, the driver binding, MMIO, allocate, lib.dma.DMA),
the board replaced by board_doubles.SimPynqDevice: the bundle's own engine in C-simulation behind the
.hwh's address map, an AXI DMA register model and a non-coherent DDR."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pynq
import pytest

from board_doubles import (REPO, CountingEngineDevice, DdrBitFlipDevice, PatchedHashDevice, SimPynqDevice,
                           StuckDmaDevice, derive_hwh, with_bitstream)
from engine_io import regmap
from host.accelerator import Accelerator, AcceleratorError, AcceleratorTimeout
from host.pynq_backend import PYNQ_MISSING, PynqBackend, VqhlsEngineDriver


def _open(bundle, overlay, **kw) -> Accelerator:
    return Accelerator.open(bundle, backend="pynq", overlay=overlay, **kw)


def test_load_and_infer_bit_exact(board_bundle, overlay, pynq_device, sim_device):
    x, expected = board_bundle.vectors()
    with _open(board_bundle, overlay, batch_size=4) as acc:
        assert isinstance(acc.backend, PynqBackend) and isinstance(acc.backend.engine, VqhlsEngineDriver)
        acc.load()
        assert acc.loaded and acc.load_cycles > 0
        assert sim_device.calls == 1 and sim_device.last_call["n_images"] == 0
        y = acc.infer(x)                                   # 6 images: batches of 4 and 2, double-buffered
        assert y.dtype == np.int8 and y.shape == (len(x), *board_bundle.out_shape)
        np.testing.assert_array_equal(y, expected)
        assert sim_device.calls == 3 and sim_device.last_call["n_images"] == 2
        assert acc.stats["modelled_cycles"] > 0 and acc.stats["images"] == len(x)
        assert pynq_device.dma.transfers == {0x00: 2, 0x30: 2}
        assert pynq_device.flushes >= 3 and pynq_device.invalidates >= 2     # image + 2 inputs; 2 outputs
        np.testing.assert_array_equal(acc.infer(x, argmax=True), expected.reshape(len(x), -1).argmax(1))
        assert acc.backend.fclk_mhz == 100.0 and acc.fclk_mhz == 100.0
        assert "vqhls_engine_0 at 0x43c00000" in acc.backend.describe()
        t = acc.throughput_test(batch=6)
        assert t["backend"] == "pynq" and t["modelled_cycles"] > 0


def test_real_cycles_measured_on_the_board(board_bundle, sim_device, overlay_for):
    """The PYNQ backend reads REAL_CYCLES at 0x48 / 0x4C (the double's counter answers only there) and reports
    it as measured, beside the modelled CYCLES: a planted count above 2^32 (both words matter) gives the
    cycles and images/s at the 100 MHz PL clock, worked out here by hand."""
    planted = (1 << 32) + 600_000_000            # 4,894,967,296 cycles: 48.95 s at 100 MHz
    dev = CountingEngineDevice(sim_device, planted)
    x, expected = board_bundle.vectors()
    with _open(board_bundle, overlay_for(dev), batch_size=len(x)) as acc:
        acc.load()
        assert acc.load_real_cycles == planted and acc.load_cycles != planted
        np.testing.assert_array_equal(acc.infer(x), expected)
        st = acc.stats
        assert st["measured_cycles"] == planted and st["modelled_cycles"] not in (None, planted)
        assert st["measured_images_per_s"] == pytest.approx(len(x) / 48.94967296)
        t = acc.throughput_test(batch=6)
        assert t["measured_cycles"] == planted and t["measured_cycles_per_image"] == pytest.approx(planted / 6)
        assert t["measured_throughput[images/s]"] == pytest.approx(6 / 48.94967296)
    assert set(dev.counting.reads) == {0x48, 0x4C}


def test_host_run_cli_prints_measured_cycles_on_pynq(board_bundle, sim_device, monkeypatch, capsys):
    """``python -m host.run`` on the board: the measured cycles and images/s (REAL_CYCLES) on their own line,
    labelled measured, beside the modelled CYCLES line."""
    from host import run

    dev = CountingEngineDevice(sim_device, 6 * 25_000)   # 6 images in 150,000 cycles: 25,000 / image
    monkeypatch.setattr(pynq.pl_server.device.Device, "_active_device", dev, raising=False)
    monkeypatch.setattr(pynq.ps._ClocksMeta, "set_pl_clk", lambda cls, *a, **k: None)
    assert run.main([str(board_bundle.path), "--batch", "6"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    # 25,000 cycles per image at 100 MHz: 250 us per image, 4,000 images/s
    assert ("measured   25,000 cycles/image measured on the board (REAL_CYCLES register, the engine's counter) = "
            "4,000 images/s at 100 MHz") in out
    assert "150,000 measured cycles (REAL_CYCLES)" in out and "modelled cycles (CYCLES)" in out
    assert "cycles/image (CYCLES register)" in out and "not available" not in out


def test_default_overlay_is_the_bundle_bitstream(board_bundle, sim_device, monkeypatch):
    """overlay=None: pynq.Overlay(bundle.bit_path) on the active device, downloaded (the double parses the
    .bit header as PYNQ does, the PL clock request is recorded instead of written to the PS)."""
    dev = SimPynqDevice(sim_device)
    clocks = []
    monkeypatch.setattr(pynq.pl_server.device.Device, "_active_device", dev, raising=False)
    monkeypatch.setattr(pynq.ps._ClocksMeta, "set_pl_clk",
                        lambda cls, idx, div0=None, div1=None, clk_mhz=100.0: clocks.append((idx, clk_mhz)))
    x, expected = board_bundle.vectors()
    with Accelerator.open(board_bundle.path, backend="pynq") as acc:
        assert dev.downloads == [str(board_bundle.bit_path)]
        assert acc.backend.overlay.is_loaded() and acc.backend.overlay.device is dev
        np.testing.assert_array_equal(acc.infer(x), expected)
    assert clocks and clocks[0][0] == 0


def test_host_run_cli_on_pynq(board_bundle, sim_device, monkeypatch, capsys):
    """``python -m host.run BUNDLE`` (the board's command, default backend pynq) end to end on the double."""
    from host import run

    monkeypatch.setattr(pynq.pl_server.device.Device, "_active_device", SimPynqDevice(sim_device), raising=False)
    monkeypatch.setattr(pynq.ps._ClocksMeta, "set_pl_clk", lambda cls, *a, **k: None)
    assert run.main([str(board_bundle.path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "vqhls_engine_0 at 0x43c00000" in out and "6/6 bit-exact" in out


def test_bundle_without_bitstream_needs_an_overlay(board_bundle_dir):
    with pytest.raises(AcceleratorError, match="has no bitstream"):
        Accelerator.open(board_bundle_dir, backend="pynq")


def test_config_hash_mismatch_other_engine(board_bundle, other_engine_bundle, make_sim, overlay_for):
    """The bitstream's engine (here: the SimDevice compiled from a bundle of another EngineConfig) is not
    the bundle's: load() refuses, naming both hashes."""
    assert other_engine_bundle.config_hash != board_bundle.config_hash
    ol = overlay_for(SimPynqDevice(make_sim(other_engine_bundle)))
    with _open(board_bundle, ol) as acc:
        with pytest.raises(AcceleratorError, match=(f"bundle built for engine {board_bundle.config_hash}, "
                                                    f"the bitstream is engine {other_engine_bundle.config_hash}")):
            acc.load()
        assert not acc.loaded


def test_config_hash_mismatch_patched_register(board_bundle, sim_device, overlay_for):
    ol = overlay_for(PatchedHashDevice(sim_device, 0xDEADBEEF))
    with _open(board_bundle, ol) as acc:
        with pytest.raises(AcceleratorError, match="the bitstream is engine deadbeef"):
            acc.load()


def test_wrong_input_shape_and_dtype(board_bundle, overlay):
    x, _ = board_bundle.vectors()
    with _open(board_bundle, overlay) as acc:
        acc.load()
        with pytest.raises(ValueError, match=r"uint8 \[B, 8, 8, 1\].*got uint8 \[6, 8, 8\]"):
            acc.infer(x[..., 0])
        with pytest.raises(ValueError, match=r"got int8 \[6, 8, 8, 1\].*unsigned"):
            acc.infer(x.astype(np.int8))
        with pytest.raises(ValueError, match=r"got int32"):
            acc.infer(x.astype(np.int32))
        with pytest.raises(ValueError, match=r"float input must be \[B, 1, 8, 8\]"):
            acc.infer(np.zeros((2, 8, 8, 1), np.float32))


@pytest.mark.parametrize("stuck, name", [("S2MM", r"axi_dma_0\.recvchannel \(S2MM"),
                                         ("MM2S", r"axi_dma_0\.sendchannel \(MM2S")])
def test_dma_timeout_names_the_channel(board_bundle, sim_device, overlay_for, stuck, name):
    """A DMA channel that never reports idle: dma_wait's deadline (pynq's own wait() would spin forever)
    raises AcceleratorTimeout naming the channel; recover() resets the DMA and the next call works."""
    dev = StuckDmaDevice(sim_device, stuck)
    x, expected = board_bundle.vectors()
    with _open(board_bundle, overlay_for(dev), timeout=0.2) as acc:
        acc.load()
        with pytest.raises(AcceleratorTimeout, match=name):
            acc.infer(x)
        assert dev.dma.resets == 1
        dev.dma.stuck = None
        np.testing.assert_array_equal(acc.infer(x), expected)


def test_engine_hang_names_the_engine(board_bundle, overlay):
    """A run call whose input never arrives: wait_done's deadline names the engine and the DMA state."""
    with _open(board_bundle, overlay, timeout=0.2) as acc:
        acc.load()
        be = acc.backend
        be.write_reg("N_IMAGES", 1)
        be.start()
        vlnv = re.escape(f"vqhls:vqhls:vqhls_engine_{board_bundle.config_hash}:1.0")
        with pytest.raises(AcceleratorTimeout, match=rf"vqhls_engine_0 \({vlnv}\) did not "
                                                     r"assert ap_done within 0\.2 s \(CTRL 0x01, busy"):
            be.wait_done(0.2, "probe call")


def test_status_error_on_load(board_bundle, sim_device, overlay_for):
    """One bit of the parameter image flips in DDR: the load call's CRC32 check reports ERR_CRC."""
    dev = DdrBitFlipDevice(sim_device)
    with _open(board_bundle, overlay_for(dev)) as acc:
        with pytest.raises(AcceleratorError, match="load call: engine STATUS 0x[0-9a-f]*0c: program image checksum") \
                as e:
            acc.load()
        assert e.value.code == regmap.ERR_CRC and not acc.loaded


def test_status_error_on_a_run_call(board_bundle, overlay):
    """N_IMAGES = 2 with one image's bytes sent (the DMA length disagrees with N_IMAGES): the engine stops
    at the early TLAST (ERR_TLAST) and still ends its output packet, so the receive completes."""
    x, expected = board_bundle.vectors()
    with _open(board_bundle, overlay) as acc:
        acc.load()
        be = acc.backend
        inb, outb = be.alloc(2 * acc.in_bytes), be.alloc(2 * acc.out_bytes)
        inb[: acc.in_bytes] = x[0].reshape(-1)
        inb.flush()
        be.write_reg("N_IMAGES", 2)
        be.dma_recv(outb, 2 * acc.out_bytes)
        be.dma_send(inb, acc.in_bytes)
        be.start()
        be.wait_done(1.0, "short batch")
        status = be.read_reg("STATUS")
        be.dma_wait(1.0)
        assert regmap.decode_status(status)[0] == regmap.ERR_TLAST, regmap.status_message(status)
        assert be.dma.recvchannel.transferred == 2 * acc.out_bytes          # the packet still ends, at TLAST
        assert not np.asarray(outb[acc.out_bytes:]).any()                  # the image never sent: zeros
        np.testing.assert_array_equal(acc.infer(x), expected)          # the next call is clean


def test_missing_flush_shows(board_bundle, overlay, monkeypatch):
    """The double's DDR is not coherent (as HP0): without flush the engine reads stale DDR (zeros)."""
    monkeypatch.setattr(pynq.buffer.PynqBuffer, "flush", lambda self: None)
    with _open(board_bundle, overlay) as acc:
        with pytest.raises(AcceleratorError, match="bad magic"):
            acc.load()


def test_register_map_of_the_bitstream_is_checked(board_bundle, board_bundle_dir, sim_device, tmp_path):
    """A .hwh whose engine registers sit elsewhere than engine_io/regmap.py says (another kit's bitstream)."""
    hwh = derive_hwh.derive(config_hash=board_bundle.config_hash).replace(
        b'<REGISTER NAME="status">', b'<REGISTER NAME="status_moved">')
    bundle = with_bitstream(board_bundle_dir, tmp_path / "deploy", hwh=hwh)
    import host.pynq_backend  # noqa: F401

    ol = pynq.Overlay(str(bundle / "vqhls.bit"), download=False, device=SimPynqDevice(sim_device))
    with pytest.raises(AcceleratorError, match="register map differs from engine_io/regmap.py \\(status missing"):
        Accelerator.open(bundle, backend="pynq", overlay=ol)


def test_bitstream_of_another_engine_config_is_refused(board_bundle, board_bundle_dir, sim_device, tmp_path,
                                                       monkeypatch):
    """The engine IP's VLNV carries its EngineConfig hash (engine_io.hwh): an overlay whose .hwh names another
    hash is refused when the backend opens, before any register access, naming both; the driver is bound
    per hash, so an overlay made before the backend registered it still gets VqhlsEngineDriver."""
    from engine_io import hwh as hwh_mod
    from host.pynq_backend import engine_driver

    other = "deadbeef" if board_bundle.config_hash != "deadbeef" else "feedface"
    bundle = with_bitstream(board_bundle_dir, tmp_path / "deploy", hwh=derive_hwh.derive(config_hash=other))
    dev = SimPynqDevice(sim_device)
    ol = pynq.Overlay(str(bundle / "vqhls.bit"), download=False, device=dev)
    with pytest.raises(AcceleratorError) as e:
        Accelerator.open(bundle, backend="pynq", overlay=ol)
    assert str(e.value).endswith(
        f"IP vqhls_engine_0 is {hwh_mod.engine_vlnv(other)} (engine {other}), the bundle's engine is "
        f"{board_bundle.config_hash} ({hwh_mod.engine_vlnv(board_bundle.config_hash)}): load the bitstream built "
        "for this bundle's EngineConfig (python -m flow.bundle add-bitstream checks the pair)")
    assert sim_device.calls == 0
    # the matching .hwh on an Overlay made while pynq knows no driver for the VLNV (as before the backend
    # registered one): pynq binds DefaultIP, the backend binds its own driver to the IP's description
    from pynq import overlay as pynq_overlay

    vlnv = hwh_mod.engine_vlnv(board_bundle.config_hash)
    engine_driver(board_bundle.config_hash)
    for key in (vlnv, vlnv.rpartition(":")[0]):
        monkeypatch.delitem(pynq_overlay._ip_drivers, key)
    fresh = with_bitstream(board_bundle_dir, tmp_path / "deploy2")
    before = pynq.Overlay(str(fresh / "vqhls.bit"), download=False, device=SimPynqDevice(sim_device))
    assert type(before.vqhls_engine_0) is pynq.DefaultIP
    with Accelerator.open(fresh, backend="pynq", overlay=before) as acc:
        assert type(acc.backend.engine) is engine_driver(board_bundle.config_hash)
        x, expected = board_bundle.vectors()
        acc.load()
        np.testing.assert_array_equal(acc.infer(x), expected)


def test_without_pynq_one_clear_error(board_bundle):
    """Where pynq cannot be imported, the module and the Accelerator say how to get it."""
    code = f"""
import sys
sys.modules["pynq"] = None            # as if pynq were not installed
try:
    import host.pynq_backend
except ModuleNotFoundError as e:
    assert e.name == "pynq", e.name
    print("MODULE:", e)
from host.accelerator import Accelerator, AcceleratorError
try:
    Accelerator.open({str(board_bundle.path)!r}, backend="pynq")
except AcceleratorError as e:
    print("ACCEL:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"MODULE: {PYNQ_MISSING}" in out.stdout
    assert "ACCEL: pynq is not installed: pip install vqhls[board]" in out.stdout


def test_dma_error_is_reported_and_reset(board_bundle, overlay, pynq_device):
    """A receive shorter than the engine's output packet: the AXI DMA flags DMAIntErr and halts (PG021);
    the error names the channel, the DMA is reset, and the next call works."""
    x, expected = board_bundle.vectors()
    with _open(board_bundle, overlay) as acc:
        acc.load()
        be = acc.backend
        inb, outb = be.alloc(acc.in_bytes), be.alloc(acc.out_bytes)
        inb[:] = x[0].reshape(-1)
        inb.flush()
        be.write_reg("N_IMAGES", 1)
        be.dma_recv(outb, 4)                        # 4 of the 10 output bytes: full before TLAST
        be.dma_send(inb, acc.in_bytes)
        be.start()
        be.wait_done(1.0, "one image")
        with pytest.raises(AcceleratorError,
                           match=r"axi_dma_0\.recvchannel \(S2MM.*DMAIntErr.*TLAST.*the DMA was reset"):
            be.dma_wait(1.0)
        assert pynq_device.dma.resets == 1
        np.testing.assert_array_equal(acc.infer(x), expected)
