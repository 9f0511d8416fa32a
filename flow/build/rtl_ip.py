"""The RTL engine as a Vivado IP, for a block design without Vitis HLS (``python -m flow.build --engine rtl``).

    kit = write_rtl_kit("build/x", "pynq-z2", engine)
    #   build/x/rtl/vqhls_*.v          the engine top and its units (flow.rtl.engine_rtl.engine_sources)
    #   build/x/rtl/package_ip.tcl     Vivado: ipx::package_project of vqhls_engine_top -> build/x/rtl/ip
    #   build/x/vivado/vivado.tcl      the block design of the HLS flow, taking the engine IP from ../rtl/ip
    #   build/x/vendor/run_vendor.sh   Vivado twice: the IP, then the block design -> vivado/out/vqhls.{bit,hwh}

The packaged IP stands in for the one Vitis HLS exports: the same VLNV (``engine_vlnv(EngineConfig.hash())``,
engine_io/hwh.py), the same bus interface names (s_axi_control, m_axi_gmem, in_stream, out_stream, ap_clk,
ap_rst_n, interrupt: the RTL top's ``s_axis_in_*`` / ``m_axis_out_*`` ports are the in_stream / out_stream
interfaces), the memory map s_axi_control with its address block ``Reg`` of 0x80 bytes holding Vitis HLS's
register names at engine_io/regmap.py's offsets (``engine_io.hwh.expected_registers``), and the master's
address space ``Data_m_axi_gmem``. So hls_templates/tcl/vivado.tcl.j2 builds the same block design from it,
and the .hwh it leaves passes the bundle's check (flow.bundle.verify_bitstream) as the HLS IP's does.

Every port of the top is put in a bus interface here, from the rendered Verilog's port list: a port no
interface takes, or one whose direction disagrees with its role on the bus, is an RtlIpError, not an IP
with a loose pin. Nothing here has run against a real Vivado: the Tcl is checked in tclsh against recording
stubs (tests/flow/test_build_rtl.py).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine_io import hwh, regmap
from flow.boards import Board, get_board
from flow.compile.engine import EngineConfig
from flow.hls import vendor
from flow.rtl.engine_rtl import TOP, engine_sources

PACKAGE_TEMPLATE = "tcl/package_rtl_ip.tcl.j2"
RUN_SCRIPT_TEMPLATE = "tcl/run_vendor_rtl.sh.j2"
RTL_SUBDIR = "rtl"               # <out>/rtl: the Verilog, package_ip.tcl, and ip/ once Vivado ran it
PACKAGE_SCRIPT = "package_ip.tcl"
IP_SUBDIR = "ip"                 # <out>/rtl/ip: component.xml (the repository vivado.tcl takes)
PACKAGE_PROJECT = "vqhls_rtl_ip"  # the throwaway Vivado project package_ip.tcl packages from
REG_BLOCK = "Reg"                # the address block name Vitis HLS gives s_axi_control (vivado.tcl assigns it)
MASTER_SPACE = "Data_m_axi_gmem"  # the m_axi_gmem address space name Vitis HLS gives (vivado.tcl maps DDR in it)

# vivado.tcl's messages, for this IP
RTL_IP = vendor.IpSource(maker="the Vivado IP packager", script=f"{RTL_SUBDIR}/{PACKAGE_SCRIPT}",
                         command=f"vivado -mode batch -source {PACKAGE_SCRIPT} in {RTL_SUBDIR}/",
                         folder=RTL_SUBDIR, kind="the RTL engine, packaged by package_ip.tcl")


class RtlIpError(ValueError):
    """The RTL top's ports do not fit the IP's bus interfaces (a port left over, a wrong direction)."""


# ---------------------------------------------------------------------------
# bus interfaces
# ---------------------------------------------------------------------------
_AXI_MASTER_DRIVEN = ("AWID AWADDR AWLEN AWSIZE AWBURST AWLOCK AWCACHE AWPROT AWQOS AWREGION AWUSER AWVALID "
                      "WID WDATA WSTRB WLAST WUSER WVALID BREADY "
                      "ARID ARADDR ARLEN ARSIZE ARBURST ARLOCK ARCACHE ARPROT ARQOS ARREGION ARUSER ARVALID "
                      "RREADY").split()
_AXI_SLAVE_DRIVEN = "AWREADY WREADY BID BRESP BUSER BVALID ARREADY RID RDATA RRESP RLAST RUSER RVALID".split()
_AXIS_MASTER_DRIVEN = "TDATA TSTRB TKEEP TLAST TID TDEST TUSER TVALID".split()
_AXIS_SLAVE_DRIVEN = ["TREADY"]


@dataclass(frozen=True)
class BusKind:
    """A bus definition: its VLNVs and, per logical port, whether the master drives it."""

    bus: str
    abstraction: str
    master_driven: frozenset[str]
    slave_driven: frozenset[str]


AXIMM = BusKind("xilinx.com:interface:aximm:1.0", "xilinx.com:interface:aximm_rtl:1.0",
                frozenset(_AXI_MASTER_DRIVEN), frozenset(_AXI_SLAVE_DRIVEN))
AXIS = BusKind("xilinx.com:interface:axis:1.0", "xilinx.com:interface:axis_rtl:1.0",
               frozenset(_AXIS_MASTER_DRIVEN), frozenset(_AXIS_SLAVE_DRIVEN))
# single-signal buses: the "master" drives the signal (a clock or reset is an input of the IP: slave)
CLOCK = BusKind("xilinx.com:signal:clock:1.0", "xilinx.com:signal:clock_rtl:1.0", frozenset({"CLK"}), frozenset())
RESET = BusKind("xilinx.com:signal:reset:1.0", "xilinx.com:signal:reset_rtl:1.0", frozenset({"RST"}), frozenset())
INTERRUPT = BusKind("xilinx.com:signal:interrupt:1.0", "xilinx.com:signal:interrupt_rtl:1.0",
                    frozenset({"INTERRUPT"}), frozenset())


@dataclass(frozen=True)
class BusInterface:
    """One bus interface of the IP: the RTL ports ``<prefix><logical, lower case>`` (or the one ``port``)."""

    name: str                   # the interface name (the block design's pin: vivado.tcl connects it)
    kind: BusKind
    mode: str                   # "master" / "slave"
    prefix: str = ""            # RTL ports starting with it belong here; the rest of the name is the logical port
    port: str = ""              # or exactly this one port, mapped to the kind's one logical port
    params: tuple[tuple[str, str], ...] = ()


STREAMS = ("in_stream", "out_stream")
BUS_INTERFACES: tuple[BusInterface, ...] = (
    BusInterface("s_axi_control", AXIMM, "slave", prefix="s_axi_control_"),
    BusInterface("m_axi_gmem", AXIMM, "master", prefix="m_axi_gmem_"),
    BusInterface(STREAMS[0], AXIS, "slave", prefix="s_axis_in_"),
    BusInterface(STREAMS[1], AXIS, "master", prefix="m_axis_out_"),
    BusInterface("ap_clk", CLOCK, "slave", port="ap_clk",
                 params=(("ASSOCIATED_BUSIF", "s_axi_control:m_axi_gmem:" + ":".join(STREAMS)),
                         ("ASSOCIATED_RESET", "ap_rst_n"))),
    BusInterface("ap_rst_n", RESET, "slave", port="ap_rst_n", params=(("POLARITY", "ACTIVE_LOW"),)),
    BusInterface("interrupt", INTERRUPT, "master", port="interrupt", params=(("SENSITIVITY", "LEVEL_HIGH"),)),
)

_PORT = re.compile(r"\b(input|output|inout)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?(?:\[\s*(\d+)\s*:\s*(\d+)\s*\]\s*)?"
                   r"(\w+)\s*(?=[,)])")


def top_ports(verilog: str, module: str = TOP) -> dict[str, tuple[str, int]]:
    """{port: (direction, bits)} of ``module``'s ANSI port list in ``verilog`` (the rendered top)."""
    m = re.search(rf"\bmodule\s+{re.escape(module)}\s*\((.*?)\);", _strip_comments(verilog), re.S)
    if not m:
        raise RtlIpError(f"no module {module} with an ANSI port list in the rendered Verilog")
    out = {}
    for d, hi, lo, name in _PORT.findall(m.group(1) + ")"):
        out[name] = (d, abs(int(hi) - int(lo)) + 1 if hi else 1)
    return out


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


@dataclass(frozen=True)
class PortMap:
    logical: str
    physical: str


def port_maps(ports: dict[str, tuple[str, int]]) -> dict[str, list[PortMap]]:
    """{interface name: its port maps} for every port of the top; RtlIpError naming every port that no
    interface takes, whose logical name the bus does not define, or whose direction is wrong for its role."""
    maps: dict[str, list[PortMap]] = {bi.name: [] for bi in BUS_INTERFACES}
    problems = []
    for name, (direction, _bits) in ports.items():
        bi = next((b for b in BUS_INTERFACES if (b.port and name == b.port)
                   or (b.prefix and name.startswith(b.prefix))), None)
        if bi is None:
            problems.append(f"{name} (no bus interface takes it)")
            continue
        logical = next(iter(bi.kind.master_driven)) if bi.port else name[len(bi.prefix):].upper()
        if logical in bi.kind.master_driven:
            want = "output" if bi.mode == "master" else "input"
        elif logical in bi.kind.slave_driven:
            want = "input" if bi.mode == "master" else "output"
        else:
            problems.append(f"{name} ({logical} is no port of {bi.kind.abstraction})")
            continue
        if direction != want:
            problems.append(f"{name} is an {direction}, a {bi.mode} drives {logical} as an {want}")
            continue
        maps[bi.name].append(PortMap(logical, name))
    empty = [n for n, m in maps.items() if not m]
    if empty:
        problems.append(f"no port for the interface{'s' if len(empty) > 1 else ''} {', '.join(empty)}")
    if problems:
        raise RtlIpError(f"the ports of {TOP} do not fit the IP's bus interfaces: " + "; ".join(problems))
    return maps


# ---------------------------------------------------------------------------
# the register block
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IpRegister:
    name: str          # Vitis HLS's name (engine_io.hwh.expected_registers)
    offset: int
    access: str        # IP-XACT: read-write, read-only, write-only
    description: str


_ACCESS = {"rw": "read-write", "ro": "read-only", "wo": "write-only"}


def registers() -> list[IpRegister]:
    """Every register word of engine_io/regmap.py as the IP declares it, in offset order."""
    by_offset = {}
    for r in regmap.REGISTERS:
        for i in range(r.width // 32):
            part = "" if r.width == 32 else f" ({'low' if i == 0 else 'high'} word)"
            by_offset[r.offset + 4 * i] = (_ACCESS[r.access], r.doc + part)
        if r.port is not None and r.access == "ro":
            by_offset[r.offset + r.width // 8] = ("read-only", f"bit 0: {r.port} valid (ap_vld)")
    out = []
    for name, off in hwh.expected_registers():
        access, doc = by_offset[off]
        out.append(IpRegister(name, off, access, doc))
    return out


# ---------------------------------------------------------------------------
# rendering and writing
# ---------------------------------------------------------------------------
def render_package_tcl(board: Board | str, engine: EngineConfig, sources: dict[str, str], *,
                       ip_dir: str = IP_SUBDIR, project_name: str = PACKAGE_PROJECT) -> str:
    """package_ip.tcl as text for ``sources`` ({file name: Verilog}, engine_sources(engine)), which lie in the
    script's folder; the IP goes to ``ip_dir`` (relative to it too). The port maps are read from the rendered
    top's port list (RtlIpError when a port fits no interface)."""
    from flow.hls import project as project_mod   # deferred: jinja2 (its template environment renders the script)

    board = get_board(board) if isinstance(board, str) else board
    top_file = f"{TOP}.v"
    if top_file not in sources:
        raise RtlIpError(f"the sources hold no {top_file}")
    return _render(PACKAGE_TEMPLATE, {
        "board": board,
        "top": TOP,
        "sources": list(sources),
        "ip_dir": ip_dir,
        "script_name": PACKAGE_SCRIPT,
        "rtl_folder": RTL_SUBDIR,
        "project_name": project_name,
        "vendor": hwh.IP_VENDOR,
        "library": hwh.IP_LIBRARY,
        "ip_name": hwh.ip_name(engine.hash()),
        "version": hwh.IP_VERSION,
        "config_hash": engine.hash(),
        "engine_vlnv": vendor.engine_vlnv(engine.hash()),
        "interfaces": BUS_INTERFACES,
        "maps": port_maps(top_ports(sources[top_file])),
        "reg_block": REG_BLOCK,
        "reg_range": regmap.ADDRESS_RANGE,
        "registers": registers(),
        "master_space": MASTER_SPACE,
    }, project_mod)


def _render(template: str, context: dict, project_mod) -> str:
    env = project_mod._environment()
    env.filters["tcl"] = vendor.tcl_quote
    return project_mod._render_one(env, template, context)


@dataclass(frozen=True)
class RtlKit:
    """The relocatable handoff of an ``--engine rtl`` build (``write_rtl_kit``)."""

    out: Path
    rtl_dir: Path          # out/rtl: the Verilog and package_ip.tcl
    package_tcl: Path      # out/rtl/package_ip.tcl
    ip_repo: Path          # out/rtl/ip: component.xml once Vivado ran package_ip.tcl
    vivado_tcl: Path       # out/vivado/vivado.tcl
    run_script: Path       # out/vendor/run_vendor.sh: Vivado (package), then Vivado (block design)
    bitstream_dir: Path    # out/vivado/out


def write_rtl_kit(out: str | os.PathLike, board: Board | str, engine: EngineConfig) -> RtlKit:
    """Write ``out/rtl`` (the engine's Verilog, package_ip.tcl), ``out/vivado/vivado.tcl`` and
    ``out/vendor/run_vendor.sh`` for ``engine``; every path in them relative, so the three folders run
    wherever they are copied together (``sh vendor/run_vendor.sh board_repo=DIR``)."""
    from flow.hls import project as project_mod   # deferred: jinja2 (its template environment renders the scripts)

    board = get_board(board) if isinstance(board, str) else board
    out = Path(out)
    rtl_dir, vivado_dir, vendor_dir = out / RTL_SUBDIR, out / vendor.VIVADO_SUBDIR, out / vendor.VENDOR_SUBDIR
    sources = engine_sources(engine)
    tcl = render_package_tcl(board, engine, sources)   # before any file is written: RtlIpError leaves none
    for name, text in sources.items():
        vendor._write_text(rtl_dir / name, text)
    package_tcl = vendor._write_text(rtl_dir / PACKAGE_SCRIPT, tcl)
    ip_repo = rtl_dir / IP_SUBDIR
    viv = vendor.write_vivado_tcl(vivado_dir / "vivado.tcl", board, config_hash=engine.hash(), ip_repo=ip_repo,
                                  out_dir=vivado_dir / vendor.VIVADO_OUT, ip_source=RTL_IP)
    context = {
        "board": board,
        "config_hash": engine.hash(),
        "engine_vlnv": vendor.engine_vlnv(engine.hash()),
        "rtl_rel": vendor._relative(rtl_dir, vendor_dir),
        "vivado_rel": vendor._relative(vivado_dir, vendor_dir),
        "package_script": PACKAGE_SCRIPT,
        "rtl_folder": RTL_SUBDIR,
        "ip_subdir": IP_SUBDIR,
        "vivado_out": vendor.VIVADO_OUT,
        "overlay_name": vendor.OVERLAY_NAME,
        "board_files": vendor.board_files_note(board),
    }
    script = vendor._write_text(vendor_dir / vendor.RUN_SCRIPT,
                                project_mod._render_one(project_mod._environment(), RUN_SCRIPT_TEMPLATE, context),
                                0o755)
    return RtlKit(out, rtl_dir, package_tcl, ip_repo, viv, script, vivado_dir / vendor.VIVADO_OUT)
