"""host.accelerator on the sim backend: load, infer, stream, stats, and every error path the board has."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engine_io import regmap
from host.accelerator import Accelerator, AcceleratorError, AcceleratorTimeout, Backend, check_program_image
from host.sim import SimBackend, SimDevice


def test_load_and_vectors_bit_exact(acc, bundle):
    acc.load()
    assert acc.loaded and acc.load_cycles > 0
    x, e = bundle.vectors()
    y = acc.infer(x)
    assert y.dtype == np.int8 and y.shape == (len(x), *bundle.out_shape)
    assert np.array_equal(y, e)
    assert acc.stats["modelled_cycles"] > 0 and acc.stats["images"] == len(x)


def test_infer_loads_first_and_streams_nothing_before(acc, bundle):
    x, e = bundle.vectors()
    dev = acc.backend.device
    assert dev.calls == 0
    assert np.array_equal(acc.infer(x, batch_size=3), e)       # load call + 3 run calls
    assert dev.calls == 4 and dev.last_call["n_images"] == 2


def test_float_input_equals_the_quantized_path(acc, bundle):
    from flow.quant.golden import quantize_input
    from models.data import load

    x, e = bundle.vectors()
    xf, _ = load("digits", "test")
    xf = xf[: len(x)]
    q = acc.quantize(xf)
    assert np.array_equal(q, quantize_input(xf, bundle.in_scale, bundle.in_unsigned))
    assert np.array_equal(q, x)                       # the bundle vectors are the first test images
    assert np.array_equal(acc.infer(xf), acc.infer(x))
    # round half to even and saturation, as the flow quantizes
    s = bundle.in_scale
    edge = np.array([0.5 * s, 1.5 * s, 2.5 * s, -3.0, 1e9], dtype=np.float64).reshape(1, 1, 1, 5)
    probe = np.broadcast_to(edge[..., :1], (1, *acc.ishape_float()[1:])).copy()
    probe.reshape(-1)[:5] = edge.reshape(-1)
    assert np.array_equal(acc.quantize(probe, clip=True), quantize_input(probe, s, bundle.in_unsigned))


def test_float_input_outside_the_bundle_range_is_refused(acc, bundle):
    """Floats the bundle cannot take as they are: pixels in 0..255 for a bundle whose inputs are 0..1 (84 %
    instead of 99 % when saturated silently), negative floats for an unsigned input, NaN / inf; each one line
    naming the range and the fix. Within half a code of the range they are rounded as before."""
    from models.data import load

    assert bundle.in_unsigned and abs(bundle.in_scale - 1 / 255) < 1e-12   # digits: uint8 codes, images in 0..1
    lo, hi = acc.input_range()
    assert lo == 0.0 and abs(hi - 1.0) < 1e-12
    xf, _ = load("digits", "test")
    xf = xf[:8]
    ok = acc.infer(xf)
    cases = {"0..255": (xf * 255, "divide them by 255"),
             "negative": (xf - 0.5, "the bundle's input is unsigned"),
             "nan": (np.where(np.arange(xf.size).reshape(xf.shape) == 3, np.nan, xf), "NaN/inf"),
             "inf": (np.where(np.arange(xf.size).reshape(xf.shape) == 70, np.inf, xf), "image 1:")}
    for name, (bad, fix) in cases.items():
        for call in (lambda b: acc.infer(b), lambda b: list(acc.stream([xf, b]))):
            with pytest.raises(ValueError) as e:
                call(bad.astype(np.float32))
            msg = str(e.value)
            assert "\n" not in msg and fix in msg, (name, msg)
            if name in ("0..255", "negative"):
                assert "[0, 1]" in msg and "codes 0..255" in msg, msg
    # rounding is not an error: half a code either side of the range still maps to the end codes
    s = bundle.in_scale
    edge = xf.astype(np.float64).copy()
    edge[0, 0, 0, 0], edge[0, 0, 0, 1] = -0.49 * s, 255.49 * s
    q = acc.quantize(edge)
    assert q[0, 0, 0, 0] == 0 and q[0, 0, 1, 0] == 255
    with pytest.raises(ValueError):
        edge[0, 0, 0, 1] = 255.6 * s
        acc.quantize(edge)
    # clip=True saturates what is finite, still refuses NaN; integer codes are taken as they are
    assert np.array_equal(acc.infer(xf * 1.5, clip=True), acc.infer(np.clip(xf * 1.5, 0, 1)))
    with pytest.raises(ValueError, match="NaN"):
        acc.infer(cases["nan"][0], clip=True)
    assert np.array_equal(acc.infer(acc.quantize(xf)), ok)


def test_stream_equals_infer(acc, bundle):
    x, e = bundle.vectors()
    xx = np.concatenate([x] * 5)                      # 40 images
    want = np.concatenate([e] * 5)
    sizes = [3, 0, 8, 1, 20, 8]                       # uneven, an empty batch, a batch larger than the first
    batches, i = [], 0
    for s in sizes:
        batches.append(xx[i: i + s])
        i += s
    outs = list(acc.stream(iter(batches)))
    assert [len(o) for o in outs] == sizes
    assert np.array_equal(np.concatenate(outs), want)
    assert np.array_equal(acc.infer(xx, batch_size=7), want)
    assert acc.stats["batches"] >= len([s for s in sizes if s])


def test_stream_keeps_two_batches_in_flight(acc, bundle):
    """The engine starts batch i+1 before batch i's results are yielded (double-buffered DMA)."""
    x, e = bundle.vectors()
    dev = acc.backend.device
    acc.load()
    gen = acc.stream(x[i: i + 2] for i in range(0, 8, 2))
    first = next(gen)
    assert np.array_equal(first, e[:2])
    assert dev.calls == 1 + 2                          # load + batches 0 and 1 already ran
    rest = list(gen)
    assert np.array_equal(np.concatenate([first, *rest]), e)


def test_abandoned_stream_leaves_the_engine_idle(acc, bundle):
    x, e = bundle.vectors()
    gen = acc.stream(x[i: i + 2] for i in range(0, 8, 2))
    next(gen)
    gen.close()
    assert not acc.backend.device.busy
    assert np.array_equal(acc.infer(x), e)


def test_dequantize_and_argmax(acc, bundle):
    x, e = bundle.vectors()
    yf = acc.infer(x, dequantize=True)
    assert yf.dtype == np.float32 and np.allclose(yf, e.astype(np.float64) * bundle.out_scale)
    am = acc.infer(x, argmax=True)
    assert am.shape == (len(x),) and np.array_equal(am, e.reshape(len(x), -1).argmax(1))


def test_shapes_stats_and_throughput(acc, bundle):
    h, w, c = bundle.in_shape
    assert acc.ishape_normal(4) == (4, h, w, c) and acc.ishape_packed(4) == (4, h * w * c)
    assert acc.oshape_normal(4) == (4, *bundle.out_shape)
    assert acc.oshape_packed(4) == (4, int(np.prod(bundle.out_shape)))
    assert acc.ishape_float(2) == (2, c, h, w)
    res = acc.throughput_test(batch=16)
    for key in ("runtime[ms]", "throughput[images/s]", "DRAM_in_bandwidth[MB/s]", "DRAM_out_bandwidth[MB/s]",
                "fclk[mhz]", "batch_size", "modelled_cycles", "modelled_throughput[images/s]"):
        assert key in res
    assert res["batch_size"] == 16 and res["fclk[mhz]"] == pytest.approx(100.0)
    assert res["throughput[images/s]"] > 0 and res["modelled_cycles"] > 0
    st = acc.stats
    assert st["latency_s"] > 0 and st["images_per_s"] > 0 and st["batches"] == 1 and st["images"] == 16
    assert st["modelled_images_per_s"] == pytest.approx(16 * 100e6 / st["modelled_cycles"])
    # the sim backend has no real counter: the measured cycles are None, not the model's
    assert res["measured_cycles"] is None and res["measured_cycles_per_image"] is None
    assert res["measured_throughput[images/s]"] is None
    assert st["measured_cycles"] is None and st["measured_images_per_s"] is None and acc.load_real_cycles is None


def test_wrong_shape_or_dtype_names_expected_and_got(acc, bundle):
    x, _ = bundle.vectors()
    with pytest.raises(ValueError, match=r"uint8 \[B, 8, 8, 1\].*got int8 \[8, 8, 8, 1\].*unsigned"):
        acc.infer(x.astype(np.int8))
    with pytest.raises(ValueError, match=r"got uint8 \[8, 64\]"):
        acc.infer(x.reshape(8, 64))
    with pytest.raises(ValueError, match=r"got int64 .*astype"):
        acc.infer(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\] \(NCHW\), got \[8, 8, 8, 1\]"):
        acc.infer(x.astype(np.float32))                # NHWC floats: the float path wants NCHW
    assert acc.backend.device.calls == 0               # nothing reached the engine


def test_config_hash_mismatch_is_a_clear_error(acc, bundle, monkeypatch):
    dev = acc.backend.device
    real = dev.read
    monkeypatch.setattr(dev, "read", lambda off: 0x12345678 if off == regmap.CONFIG_HASH else real(off))
    with pytest.raises(AcceleratorError, match=f"bundle built for engine {bundle.config_hash}, "
                                               "the bitstream is engine 12345678"):
        acc.load()
    assert not acc.loaded


def test_engine_status_error_surfaces(acc, bundle, monkeypatch):
    """A program image corrupted in DDR after the host's check: the engine's CRC check reports ERR_CRC."""
    backend = acc.backend
    real_start = backend.start

    def corrupt_then_start():
        dev = backend.device
        addr = (dev.read(regmap.PARAMS_HI) << 32) | dev.read(regmap.PARAMS_LO)
        dev.mem_write(addr + 40, b"\xff\x00\xff")
        real_start()

    monkeypatch.setattr(backend, "start", corrupt_then_start)
    with pytest.raises(AcceleratorError, match="checksum mismatch") as err:
        acc.load()
    assert err.value.code == regmap.ERR_CRC and not acc.loaded


def test_host_checks_the_image_before_the_load_call(acc, bundle, monkeypatch):
    image = bytearray(bundle.program_image())
    image[-1] ^= 1
    monkeypatch.setattr(type(bundle), "program_image", lambda self: bytes(image))
    with pytest.raises(AcceleratorError, match="CRC32 mismatch"):
        acc.load()
    with pytest.raises(AcceleratorError, match="CRC32 mismatch"):
        acc.infer(bundle.vectors()[0])
    assert acc.backend.device.calls == 0 and acc.backend.device.input_queued() == 0
    good = bundle.manifest["program"]["format_version"]
    with pytest.raises(AcceleratorError, match="format version"):
        check_program_image(bytes(image[:4]) + (good + 1).to_bytes(4, "little") + bytes(image[8:]), good)


def test_short_dma_send_is_err_tlast(acc, bundle, monkeypatch):
    x, e = bundle.vectors()
    acc.load()
    real = acc.backend.dma_send
    monkeypatch.setattr(acc.backend, "dma_send", lambda buf, n: real(buf, n - acc.in_bytes))
    with pytest.raises(AcceleratorError, match="TLAST") as err:
        acc.infer(x)
    assert err.value.code == regmap.ERR_TLAST
    monkeypatch.undo()
    assert np.array_equal(acc.infer(x), e)


def test_missing_input_times_out_naming_the_batch(acc, bundle, monkeypatch):
    x, _ = bundle.vectors()
    acc.load()
    monkeypatch.setattr(acc.backend, "dma_send", lambda buf, n: None)
    with pytest.raises(AcceleratorTimeout, match=r"batch of 8 images.*waits for input"):
        acc.infer(x)


def test_backend_choice(bundle, sim_cache, sim_library):
    with pytest.raises(AcceleratorError, match="unknown backend 'gpu'"):
        Accelerator.open(bundle.path, backend="gpu")
    with pytest.raises(AcceleratorError, match="no such directory"):
        Accelerator.open(bundle.path / "nope", backend="sim")
    if importlib.util.find_spec("pynq") is None:
        with pytest.raises(AcceleratorError, match=r"pip install vqhls\[board\]"):
            Accelerator.open(bundle.path, backend="pynq")
    dev = SimDevice(bundle, cache_dir=sim_cache)
    be = SimBackend(bundle, device=dev)
    assert isinstance(be, Backend)
    with Accelerator.open(bundle.path, backend=be) as acc:
        x, e = bundle.vectors()
        assert np.array_equal(acc.infer(x), e)
    assert dev.loaded()[0]                         # a device passed in is not closed with the accelerator
    dev.close()


def test_backend_register_names():
    assert Backend.offset("N_IMAGES") == regmap.N_IMAGES and Backend.offset("CYCLES_HI") == regmap.CYCLES_HI
    for bad in ("CTRL_AP_START", "ERR_CRC", "ADDRESS_RANGE", "PARAMS", "nope"):
        with pytest.raises(KeyError):
            Backend.offset(bad)
