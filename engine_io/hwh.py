"""Reading a Vivado hardware handoff (.hwh): the vqhls engine IP, its config hash and its register offsets.

    ip = find_engine(parse("vivado/out/vqhls.hwh"))     # None when the design has no vqhls engine
    check_engine("vivado/out/vqhls.hwh", "1a2b3c4d")    # HwhError (one line) unless it is ours, for this config

What a .hwh says about an HLS IP (a Vivado-written one is checked in tests/flow/test_bitstream_import.py, the
PYNQ-Z2 base overlay's): ``<MODULE INSTANCE=... VLNV="vendor:library:name:version" MODTYPE=name
HWVERSION=version>`` with ``<PARAMETERS><PARAMETER NAME= VALUE=/>``, and ``<ADDRESSBLOCKS><ADDRESSBLOCK
INTERFACE=s_axi_... RANGE=...><REGISTERS><REGISTER NAME=...><PROPERTY NAME="ADDRESS_OFFSET" VALUE=.../>``;
the base address is the ``MEMRANGE`` naming the instance in the processor's ``MEMORYMAP``.

The engine's config hash is in its VLNV: Vitis HLS exports the IP as ``vqhls:vqhls:vqhls_engine_<hash>:1.0``
(hls_templates/tcl/build.tcl.j2, ``config_export -ipname``; a VLNV version must be numeric, the name may
hold the 8 hex digits of ``EngineConfig.hash()``), so an IP exported for another EngineConfig is visible as
such in the Vivado catalog, in the block design and in the .hwh. Register names are Vitis HLS's: an input
``n_images``; a 64-bit argument ``params_1`` / ``params_2``; an output ``status`` then ``status_ctrl`` (its
ap_vld); the control block ``CTRL``, ``GIER``, ``IP_IER``, ``IP_ISR``.

Standard library only, Python 3.8 compatible: this runs on the board.
"""
from __future__ import annotations

import gzip
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from engine_io import regmap

# the engine IP as build.tcl exports it (config_export -vendor -library -ipname -version)
IP_VENDOR = "vqhls"
IP_LIBRARY = "vqhls"
IP_NAME_PREFIX = "vqhls_engine_"      # + EngineConfig.hash(): vqhls_engine_1a2b3c4d
IP_VERSION = "1.0"
LITE_INTERFACE = "s_axi_control"      # the engine's AXI-Lite slave (bundle=control in top.cpp)
CONTROL_REGISTERS = (("CTRL", regmap.CTRL), ("GIER", regmap.GIE), ("IP_IER", regmap.IER), ("IP_ISR", regmap.ISR))

_HASH = re.compile(r"[0-9a-f]{8}")


class HwhError(ValueError):
    """A .hwh that cannot be read, or does not hold the engine the caller expects (one-line message)."""


def ip_name(config_hash: str) -> str:
    """The engine IP's VLNV name for ``EngineConfig.hash()`` (8 hex digits): ``vqhls_engine_<hash>``."""
    h = str(config_hash).lower()
    if not _HASH.fullmatch(h):
        raise ValueError(f"config hash {config_hash!r} is not 8 hex digits (EngineConfig.hash())")
    return IP_NAME_PREFIX + h


def engine_vlnv(config_hash: str) -> str:
    """``vqhls:vqhls:vqhls_engine_<hash>:1.0``: the VLNV the engine IP of that EngineConfig is exported as."""
    return f"{IP_VENDOR}:{IP_LIBRARY}:{ip_name(config_hash)}:{IP_VERSION}"


def hash_of_vlnv(vlnv: str) -> Optional[str]:
    """The config hash an engine VLNV carries, or None when ``vlnv`` is not a vqhls engine IP with one."""
    parts = str(vlnv).split(":")
    if len(parts) != 4 or parts[0] != IP_VENDOR or parts[1] != IP_LIBRARY or not parts[2].startswith(IP_NAME_PREFIX):
        return None
    h = parts[2][len(IP_NAME_PREFIX):]
    return h if _HASH.fullmatch(h) else None


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    size: Optional[int] = None      # bits (PROPERTY SIZE), when given
    access: str = ""


@dataclass(frozen=True)
class Ip:
    """One ``<MODULE>`` of the .hwh."""

    instance: str
    vlnv: str
    modtype: str = ""
    fullname: str = ""
    parameters: Dict[str, str] = field(default_factory=dict, repr=False)
    # interface -> (address block range in bytes or None, {register name: Register})
    blocks: Dict[str, Tuple[Optional[int], Dict[str, Register]]] = field(default_factory=dict, repr=False)
    base_address: Optional[int] = None

    def registers(self, interface: str) -> Dict[str, Register]:
        return dict(self.blocks.get(interface, (None, {}))[1])


@dataclass(frozen=True)
class Hwh:
    path: str
    vivado_version: str
    modules: Tuple[Ip, ...]


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def parse(source: Union[str, "os.PathLike[str]", bytes]) -> Hwh:
    """Parse a .hwh (a path, optionally gzip-compressed, or its bytes); HwhError on a file that is not one."""
    if isinstance(source, bytes):
        where, data = "<bytes>", source
    else:
        path = Path(source)
        where = os.fspath(path)
        try:
            data = _read_bytes(path)
        except OSError as e:
            raise HwhError(f"{where}: cannot read ({e.strerror or e})") from None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise HwhError(f"{where}: not a hardware handoff (XML error: {e})") from None
    if root.tag != "EDKSYSTEM":
        raise HwhError(f"{where}: not a hardware handoff (root element <{root.tag}>, a .hwh has <EDKSYSTEM>)")
    bases: Dict[str, int] = {}
    for rng in root.iter("MEMRANGE"):
        inst, base = rng.get("INSTANCE"), _int(rng.get("BASEVALUE"))
        if inst and base is not None and rng.get("MEMTYPE") == "REGISTER":
            bases.setdefault(inst, base)
    modules = []
    for mod in root.iter("MODULE"):
        params = {p.get("NAME", ""): p.get("VALUE", "") for p in mod.findall("./PARAMETERS/PARAMETER")}
        blocks: Dict[str, Tuple[Optional[int], Dict[str, Register]]] = {}
        for blk in mod.findall("./ADDRESSBLOCKS/ADDRESSBLOCK"):
            regs: Dict[str, Register] = {}
            for reg in blk.findall("./REGISTERS/REGISTER"):
                props = {p.get("NAME"): p.get("VALUE") for p in reg.findall("./PROPERTY")}
                off = _int(props.get("ADDRESS_OFFSET"))
                if reg.get("NAME") and off is not None:
                    regs[reg.get("NAME")] = Register(reg.get("NAME"), off, _int(props.get("SIZE")),
                                                     props.get("ACCESS") or "")
            blocks[blk.get("INTERFACE", blk.get("NAME", ""))] = (_int(blk.get("RANGE")), regs)
        inst = mod.get("INSTANCE", "")
        modules.append(Ip(inst, mod.get("VLNV", ""), mod.get("MODTYPE", ""), mod.get("FULLNAME", ""), params,
                          blocks, bases.get(inst)))
    return Hwh(where, root.get("VIVADOVERSION", ""), tuple(modules))


def engines(hwh: Hwh) -> List[Ip]:
    """Every MODULE whose VLNV is a vqhls engine's (vendor and library vqhls, name vqhls_engine...)."""
    return [m for m in hwh.modules
            if m.vlnv.split(":")[:2] == [IP_VENDOR, IP_LIBRARY] and m.vlnv.split(":")[2:3] != []
            and m.vlnv.split(":")[2].startswith(IP_NAME_PREFIX.rstrip("_"))]


def find_engine(hwh: Hwh) -> Optional[Ip]:
    """The design's one vqhls engine IP, or None (HwhError when there are several)."""
    found = engines(hwh)
    if len(found) > 1:
        raise HwhError(f"{hwh.path}: {len(found)} vqhls engine IPs ({', '.join(m.instance for m in found)}): "
                       "the block design must hold exactly one")
    return found[0] if found else None


def expected_registers() -> List[Tuple[str, int]]:
    """(Vitis HLS register name, byte offset) of every register word engine_io/regmap.py defines, in offset order."""
    out = list(CONTROL_REGISTERS)
    for r in regmap.REGISTERS:
        if r.port is None:
            continue
        words = r.width // 32
        out += [(r.port if words == 1 else f"{r.port}_{i + 1}", r.offset + 4 * i) for i in range(words)]
        if r.access == "ro":
            out.append((f"{r.port}_ctrl", r.offset + 4 * words))
    return sorted(out, key=lambda kv: kv[1])


def register_mismatch(ip: Ip) -> Optional[str]:
    """The first way the engine IP's register block disagrees with engine_io/regmap.py, or None."""
    if LITE_INTERFACE not in ip.blocks:
        have = ", ".join(sorted(ip.blocks)) or "none"
        return f"no register block on {LITE_INTERFACE} (address blocks: {have})"
    rng, regs = ip.blocks[LITE_INTERFACE]
    for name, off in expected_registers():
        got = regs.get(name)
        if got is None:
            return f"register {name} missing (engine_io/regmap.py has it at 0x{off:02X})"
        if got.offset != off:
            return f"register {name} at 0x{got.offset:02X}, engine_io/regmap.py has it at 0x{off:02X}"
    if rng is not None and rng < regmap.ADDRESS_RANGE:
        return f"{LITE_INTERFACE} address range {rng} bytes, the register map needs {regmap.ADDRESS_RANGE}"
    return None


def check_engine(source: Union[str, "os.PathLike[str]", bytes, Hwh], config_hash: str) -> Ip:
    """The engine IP of the .hwh ``source``, checked to carry ``config_hash`` and engine_io/regmap.py's
    register offsets; HwhError (one line naming the mismatch) otherwise."""
    hwh = source if isinstance(source, Hwh) else parse(source)
    ip = find_engine(hwh)
    if ip is None:
        raise HwhError(f"{hwh.path}: no vqhls engine IP ({IP_VENDOR}:{IP_LIBRARY}:{IP_NAME_PREFIX}<hash>:*) in the "
                       "design: not a vqhls bitstream")
    want = str(config_hash).lower()
    got = hash_of_vlnv(ip.vlnv)
    if got is None:
        raise HwhError(f"{hwh.path}: engine IP {ip.instance} ({ip.vlnv}) carries no config hash in its name "
                       f"(expected {engine_vlnv(want) if _HASH.fullmatch(want) else IP_NAME_PREFIX + '<hash>'}): "
                       "exported by an older build.tcl; rebuild the bitstream from this bundle's HLS project")
    if got != want:
        raise HwhError(f"{hwh.path}: engine IP {ip.instance} was built for engine config {got} ({ip.vlnv}), "
                       f"the bundle's config_hash is {want}: use the bitstream built for this engine")
    bad = register_mismatch(ip)
    if bad:
        raise HwhError(f"{hwh.path}: engine IP {ip.instance}: {bad}: the bitstream does not match this kit's "
                       "register map")
    return ip
