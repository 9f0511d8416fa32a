"""Vendor tools: the Vivado block-design script, the Vitis HLS / Vivado command lines, and running them.

    from flow.hls import vendor

    project = write_project(EngineConfig(), "build/hls")                     # build.tcl (Vitis HLS)
    kit = vendor.write_vendor_kit("build", "pynq-z2", project.path, project.engine.hash())
    #   build/vivado/vivado.tcl, build/vendor/run_vendor.sh: every path relative, so build/{hls,vivado,vendor}
    #   run wherever they are copied together:  sh build/vendor/run_vendor.sh board_repo=DIR
    r = vendor.run_or_skip("vitis_hls", vendor.vitis_command(project.path, export=True), project.path,
                           "build/vitis.log")
    r = vendor.run_or_skip("vivado", vendor.vivado_command(kit.vivado_tcl), kit.vivado_tcl.parent, "build/vivado.log")
    print(r.message)     # where a tool is not installed: "skipped: vivado not found" and the command to run

``hls_templates/tcl/vivado.tcl.j2`` is rendered with the same Jinja2 environment
as the HLS project (``flow.hls.project._environment``); every value goes into
the script through the ``tcl`` filter (one Tcl word, quoted where needed), the
script's structure is the template's. The PS knowledge the template needs (IP,
automation rule, the CONFIG names that enable a port and set FCLK0, clock pins,
the DDR address segment behind a slave port) is the table ``PS_IPS`` below; a
board picks its PS and ports in ``flow.boards.Board``.

Nothing here has run against a real Vivado or Vitis HLS in this repository: the
scripts are checked in ``tclsh`` against recording stubs (tests/flow/hls/test_tcl.py).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from engine_io.hwh import IP_LIBRARY, IP_NAME_PREFIX, IP_VENDOR, IP_VERSION, engine_vlnv  # noqa: F401
from flow.boards import Board, get_board

VIVADO_TEMPLATE = "tcl/vivado.tcl.j2"
RUN_SCRIPT_TEMPLATE = "tcl/run_vendor.sh.j2"

# The engine IP as build.tcl exports it: engine_vlnv(EngineConfig.hash()) = vqhls:vqhls:vqhls_engine_<hash>:1.0
# (engine_io/hwh.py, where the bundle's bitstream check reads it back from the .hwh).
ENGINE_CELL = "vqhls_engine_0"
DMA_CELL = "axi_dma_0"
OVERLAY_NAME = "vqhls"          # NAME.bit + NAME.hwh in the output directory (pynq.Overlay("NAME.bit"))
DEFAULT_PROJECT_NAME = "vqhls_bd"

# The handoff folders of a build, relative to its --out folder (write_vendor_kit)
HLS_SUBDIR = "hls"
VIVADO_SUBDIR = "vivado"
VENDOR_SUBDIR = "vendor"
RUN_SCRIPT = "run_vendor.sh"
VIVADO_OUT = "out"              # vivado/out/vqhls.{bit,hwh}

# Board files Vivado does not ship, by the board part's vendor: where to get them (board_repo=DIR)
BOARD_FILES = {
    "tul.com.tw": "the TUL board files: boards/TUL/pynq-z2 of github.com/Xilinx/XilinxBoardStore "
                  "(git clone it, pass board_repo=<clone>/boards/TUL), or install them from Vivado's XHub store",
}


def board_files_note(board: Board | str) -> str:
    """Where the board files of ``board`` come from when Vivado does not ship them; "" when it does."""
    board = get_board(board) if isinstance(board, str) else board
    return BOARD_FILES.get(board.board_part.split(":")[0], "") if board.board_part else ""


# ---------------------------------------------------------------------------
# the processing systems
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PsPort:
    """An AXI port of the PS: its interface pin, the CONFIG property that enables it, its clock pin."""

    name: str
    enable: str
    clock: str


@dataclass(frozen=True)
class PsSlavePort(PsPort):
    """A PS slave port into DDR: the addressing interface and the DDR segment the PL masters get."""

    addr_intf: str = ""
    ddr_segment: str = ""


@dataclass(frozen=True)
class PsIp:
    vlnv: str                        # without version: Vivado takes the catalog's current one
    kind: str                        # "ps7" (Zynq-7000) or "psu" (Zynq UltraScale+)
    cell: str
    rule: str                        # apply_bd_automation rule (board preset)
    fclk: str                        # PL clock 0 and its reset
    fclk_resetn: str
    fclk_freq: str                   # CONFIG property: FCLK0 in MHz
    clock_enable: tuple[str, ...]    # CONFIG properties set to 1 so FCLK0 and its reset exist
    masters: tuple[PsPort, ...]      # every PS master port: the board's gp_port on, the others off
    slaves: tuple[PsSlavePort, ...]


def _ps7_hp(i: int) -> PsSlavePort:
    return PsSlavePort(f"S_AXI_HP{i}", f"PCW_USE_S_AXI_HP{i}", f"S_AXI_HP{i}_ACLK", f"S_AXI_HP{i}", f"HP{i}_DDR_LOWOCM")


def _psu_slave(port: str, gp: int, short: str) -> PsSlavePort:
    # ZynqMP: S_AXI_HPC0/1_FPD are SAXIGP0/1, S_AXI_HP0..3_FPD are SAXIGP2..5
    return PsSlavePort(port, f"PSU__USE__S_AXI_GP{gp}", f"saxi{short.lower()}_fpd_aclk", f"SAXIGP{gp}",
                       f"{short}_DDR_LOW")


PS_IPS: dict[str, PsIp] = {
    "xilinx.com:ip:processing_system7": PsIp(
        vlnv="xilinx.com:ip:processing_system7", kind="ps7", cell="processing_system7_0",
        rule="xilinx.com:bd_rule:processing_system7",
        fclk="FCLK_CLK0", fclk_resetn="FCLK_RESET0_N", fclk_freq="PCW_FPGA0_PERIPHERAL_FREQMHZ",
        clock_enable=("PCW_EN_CLK0_PORT", "PCW_EN_RST0_PORT"),
        masters=(PsPort("M_AXI_GP0", "PCW_USE_M_AXI_GP0", "M_AXI_GP0_ACLK"),
                 PsPort("M_AXI_GP1", "PCW_USE_M_AXI_GP1", "M_AXI_GP1_ACLK")),
        slaves=tuple(_ps7_hp(i) for i in range(4))),
    "xilinx.com:ip:zynq_ultra_ps_e": PsIp(
        vlnv="xilinx.com:ip:zynq_ultra_ps_e", kind="psu", cell="zynq_ultra_ps_e_0",
        rule="xilinx.com:bd_rule:zynq_ultra_ps_e",
        fclk="pl_clk0", fclk_resetn="pl_resetn0", fclk_freq="PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ",
        clock_enable=("PSU__FPGA_PL0_ENABLE",),
        masters=(PsPort("M_AXI_HPM0_FPD", "PSU__USE__M_AXI_GP0", "maxihpm0_fpd_aclk"),
                 PsPort("M_AXI_HPM1_FPD", "PSU__USE__M_AXI_GP1", "maxihpm1_fpd_aclk"),
                 PsPort("M_AXI_HPM0_LPD", "PSU__USE__M_AXI_GP2", "maxihpm0_lpd_aclk")),
        slaves=(_psu_slave("S_AXI_HPC0_FPD", 0, "HPC0"), _psu_slave("S_AXI_HPC1_FPD", 1, "HPC1"),
                *(_psu_slave(f"S_AXI_HP{i}_FPD", i + 2, f"HP{i}") for i in range(4)))),
}


class BoardDesignError(ValueError):
    """The board does not describe a block design this module can build (PS IP or ports unknown)."""


def _ps_of(board: Board) -> tuple[PsIp, PsPort, PsSlavePort]:
    if board.ps_ip not in PS_IPS:
        raise BoardDesignError(f"board {board.name}: PS IP {board.ps_ip!r} unknown: one of {', '.join(PS_IPS)}")
    ps = PS_IPS[board.ps_ip]
    gp = {p.name: p for p in ps.masters}.get(board.gp_port)
    hp = {p.name: p for p in ps.slaves}.get(board.hp_port)
    if gp is None:
        raise BoardDesignError(f"board {board.name}: gp_port {board.gp_port!r} is not a master port of {ps.vlnv} "
                               f"({', '.join(p.name for p in ps.masters)})")
    if hp is None:
        raise BoardDesignError(f"board {board.name}: hp_port {board.hp_port!r} is not a slave port of {ps.vlnv} "
                               f"({', '.join(p.name for p in ps.slaves)})")
    return ps, gp, hp


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
_TCL_BARE = re.compile(r"[A-Za-z0-9_.,:/@%+=-]+")
_TCL_SPECIAL = re.compile(r'([\\"$\[\]{};])')
_TCL_CONTROL = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def tcl_quote(value) -> str:
    """``value`` as exactly one Tcl word that reads back as ``str(value)`` (the template's ``tcl`` filter)."""
    s = str(value)
    if _TCL_BARE.fullmatch(s):
        return s
    s = _TCL_SPECIAL.sub(r"\\\1", s)
    return '"' + "".join(_TCL_CONTROL.get(c) or (c if " " <= c <= "~" else _tcl_escape(c)) for c in s) + '"'


def _tcl_escape(c: str) -> str:
    # control and non-ASCII characters as \u / \U escapes: the script stays ASCII, whatever encoding
    # the Tcl interpreter reads it in
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def _fmt_mhz(mhz: float) -> str:
    return f"{mhz:g}"


@dataclass(frozen=True)
class IpSource:
    """Where the engine IP that vivado.tcl takes comes from (the script's comments and error messages name it).
    Every field is plain text without Tcl metacharacters (it lands inside Tcl strings)."""

    maker: str      # "Vitis HLS": the tool that exports the IP
    script: str     # "build.tcl -tclargs export=1": the script (and options) that exports it
    command: str    # the command line that exports it
    folder: str     # "hls": the build's folder holding that script
    kind: str       # "Vitis HLS IP": what the engine cell is


# the HLS engine, exported by Vitis HLS (the default); flow.build.rtl_ip has the RTL engine's
HLS_IP = IpSource(maker="Vitis HLS", script="build.tcl -tclargs export=1",
                  command="vitis_hls -f build.tcl -tclargs export=1", folder="hls", kind="Vitis HLS IP")


def _relative(path: str | os.PathLike, script_dir: str | os.PathLike) -> str:
    """``path`` relative to ``script_dir`` (POSIX separators): what the script joins to its own folder."""
    return Path(os.path.relpath(Path(path).resolve(), Path(script_dir).resolve())).as_posix()


def render_vivado_tcl(board: Board | str, *, config_hash: str, ip_repo: str | os.PathLike,
                      out_dir: str | os.PathLike, script_dir: str | os.PathLike = ".",
                      project_name: str = DEFAULT_PROJECT_NAME, overlay_name: str = OVERLAY_NAME,
                      ip_source: IpSource = HLS_IP) -> str:
    """The Vivado script (block design -> bitstream) for ``board`` as text.

    ``config_hash``: the EngineConfig.hash() the engine IP was exported for (its VLNV, ``engine_vlnv``);
    ``ip_repo``: the engine IP that Vitis HLS exported (``ip_repo_dir(project)``); ``out_dir``: where
    the script copies ``{overlay_name}.bit`` / ``.hwh`` and writes the utilization and timing reports.
    Both go into the script relative to ``script_dir``, the folder the script will be written to: the
    script joins them to its own location at run time, so it runs wherever it is copied together with
    them. The Vivado project ``project_name`` is created next to the script. ``ip_source``: what exports
    the IP (HLS_IP, or the RTL engine's packager: flow.build.rtl_ip), named in the script's messages.
    """
    from flow.hls import project as project_mod   # deferred: jinja2 (its template environment renders the script)

    board = get_board(board) if isinstance(board, str) else board
    ps, gp, hp = _ps_of(board)
    for what, name in (("project_name", project_name), ("overlay_name", overlay_name)):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"{what} {name!r}: letters, digits and _ only (it names Vivado objects and files)")
    env = project_mod._environment()
    env.filters["tcl"] = tcl_quote
    context = {
        "board": board,
        "ps": ps,
        "gp": gp,
        "hp": hp,
        "fclk_mhz": _fmt_mhz(board.clock_mhz),
        "ip_repo": _relative(ip_repo, script_dir),
        "out_dir": _relative(out_dir, script_dir),
        "project_name": project_name,
        "overlay_name": overlay_name,
        "config_hash": config_hash,
        "engine_vlnv": engine_vlnv(config_hash),
        "engine_vlnv_prefix": f"{IP_VENDOR}:{IP_LIBRARY}:{IP_NAME_PREFIX}",
        "engine_cell": ENGINE_CELL,
        "dma_cell": DMA_CELL,
        "ip": ip_source,
    }
    return project_mod._render_one(env, VIVADO_TEMPLATE, context)


def _write_text(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mode is not None:
        tmp.chmod(mode)
    os.replace(tmp, path)
    return path


def write_vivado_tcl(path: str | os.PathLike, board: Board | str, **kwargs) -> Path:
    """Render ``render_vivado_tcl(board, **kwargs)`` to ``path`` (directories created; paths in it relative
    to ``path``'s folder); returns the path."""
    path = Path(path)
    return _write_text(path, render_vivado_tcl(board, script_dir=path.parent, **kwargs))


@dataclass(frozen=True)
class VendorKit:
    """The relocatable vendor handoff of one build (``write_vendor_kit``)."""

    out: Path              # the build's --out folder
    hls_dir: Path          # out/hls: build.tcl (Vitis HLS)
    vivado_tcl: Path       # out/vivado/vivado.tcl
    run_script: Path       # out/vendor/run_vendor.sh: Vitis HLS, then Vivado
    bitstream_dir: Path    # out/vivado/out: vqhls.bit + vqhls.hwh once Vivado ran


def write_vendor_kit(out: str | os.PathLike, board: Board | str, hls_dir: str | os.PathLike,
                     config_hash: str) -> VendorKit:
    """Write ``out/vivado/vivado.tcl`` and ``out/vendor/run_vendor.sh`` for the HLS project ``hls_dir``
    (``out/hls`` in a build) of the engine ``config_hash``: every path in them is relative, so the
    three folders run wherever they are copied together (``sh vendor/run_vendor.sh board_repo=DIR``)."""
    from flow.hls import project as project_mod   # deferred: jinja2 (its template environment renders the script)

    board = get_board(board) if isinstance(board, str) else board
    out = Path(out)
    hls_dir = Path(hls_dir)
    vivado_dir = out / VIVADO_SUBDIR
    vendor_dir = out / VENDOR_SUBDIR
    tcl = write_vivado_tcl(vivado_dir / "vivado.tcl", board, config_hash=config_hash,
                           ip_repo=ip_repo_dir(hls_dir), out_dir=vivado_dir / VIVADO_OUT)
    env = project_mod._environment()
    context = {
        "board": board,
        "config_hash": config_hash,
        "engine_vlnv": engine_vlnv(config_hash),
        "hls_rel": _relative(hls_dir, vendor_dir),
        "vivado_rel": _relative(vivado_dir, vendor_dir),
        "vivado_out": VIVADO_OUT,
        "overlay_name": OVERLAY_NAME,
        "board_files": board_files_note(board),
    }
    script = _write_text(vendor_dir / RUN_SCRIPT, project_mod._render_one(env, RUN_SCRIPT_TEMPLATE, context), 0o755)
    return VendorKit(out, hls_dir, tcl, script, vivado_dir / VIVADO_OUT)


def kit_command(out: str | os.PathLike) -> str:
    """The one line that runs a build's vendor handoff: ``sh OUT/vendor/run_vendor.sh board_repo=DIR``
    (OUT relative to the working directory when it lies below it; board_repo always named: DIR is
    ``board_files_note(board)``'s folder, or any board-file folder where Vivado ships the board)."""
    out = Path(out)
    try:
        shown = out.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = str(out)
    return f"sh {shlex.quote(shown + '/' + VENDOR_SUBDIR + '/' + RUN_SCRIPT)} board_repo=DIR"


def ip_repo_dir(project_dir: str | os.PathLike) -> Path:
    """Where ``vitis_hls -f build.tcl -tclargs export=1`` leaves the engine IP (component.xml)."""
    from flow.hls.project import PROJECT_NAME   # deferred: flow.hls.project imports jinja2; only its name is needed

    return Path(project_dir) / f"{PROJECT_NAME}_prj" / "solution1" / "impl" / "ip"


def check_hls_project(project, board: Board | str) -> None:
    """Raise ValueError unless the HLS ``project`` (flow.hls.project.Project) targets ``board``'s part and clock."""
    board = get_board(board) if isinstance(board, str) else board
    problems = []
    if project.part != board.part:
        problems.append(f"part {project.part} (board: {board.part})")
    if abs(project.clock_ns * board.clock_mhz - 1000.0) > 1e-6:
        problems.append(f"clock {project.clock_ns} ns (board FCLK0 {board.clock_mhz:g} MHz = "
                        f"{1000.0 / board.clock_mhz:g} ns)")
    if problems:
        raise ValueError(f"HLS project {project.path} does not match board {board.name}: " + "; ".join(problems)
                         + f": write it with write_project(..., part={board.part!r}, "
                           f"clock_ns={1000.0 / board.clock_mhz:g})")


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def find_tool(name: str) -> str | None:
    """Absolute path of ``name`` on PATH (``vitis_hls``, ``vivado``), or None."""
    return shutil.which(name)


def vitis_command(project_dir: str | os.PathLike, *, csim: bool = True, synth: bool = True, cosim: bool = False,
                  export: bool = False, impl: bool = False) -> list[str]:
    """``vitis_hls -f PROJECT/build.tcl -tclargs csim=.. synth=.. cosim=.. export=.. impl=..``.

    ``impl`` (export with Vivado place & route of the IP: post-route resources and timing) implies ``export``."""
    tcl = Path(project_dir).resolve() / "build.tcl"
    opts = {"csim": csim, "synth": synth, "cosim": cosim, "export": export or impl, "impl": impl}
    return ["vitis_hls", "-f", str(tcl), "-tclargs", *(f"{k}={int(bool(v))}" for k, v in opts.items())]


def vivado_command(tcl_path: str | os.PathLike, *, jobs: int | None = None,
                   board_repo: str | os.PathLike | None = None) -> list[str]:
    """``vivado -mode batch -nojournal -notrace -source TCL [-tclargs jobs=N board_repo=DIR]``."""
    cmd = ["vivado", "-mode", "batch", "-nojournal", "-notrace", "-source", str(Path(tcl_path).resolve())]
    args = []
    if jobs is not None:
        args.append(f"jobs={int(jobs)}")
    if board_repo is not None:
        args.append(f"board_repo={Path(board_repo).resolve()}")
    return cmd + (["-tclargs", *args] if args else [])


def command_line(cmd: list[str], cwd: str | os.PathLike) -> str:
    """The shell line that runs ``cmd`` in ``cwd``: ``cd CWD && CMD`` (shlex-quoted)."""
    return f"cd {shlex.quote(str(cwd))} && {shlex.join(str(c) for c in cmd)}"


@dataclass(frozen=True)
class VendorResult:
    ran: bool                   # False: the tool is not installed here (message says what to run elsewhere)
    returncode: int | None
    log: Path | None            # the tool's stdout + stderr
    message: str                # first line: "skipped: TOOL not found" / "TOOL finished ..." / "TOOL failed ..."
    command: str = ""           # the shell line (cd CWD && CMD)

    @property
    def ok(self) -> bool:
        return self.ran and self.returncode == 0


def run_or_skip(tool: str, cmd: list[str], cwd: str | os.PathLike, log_path: str | os.PathLike, *,
                progress: bool | None = None, tail: int = 20) -> VendorResult:
    """Run ``cmd`` in ``cwd`` when ``tool`` is on PATH, its output (stdout + stderr) to ``log_path``.

    Without the tool: ``ran=False``, message ``skipped: TOOL not found`` and, on the next line, the exact
    command line to run where it is installed. ``progress``: a tqdm line counter on stderr (None: only
    on a terminal). A failed run's message ends with the last ``tail`` lines of the log.
    """
    line = command_line(cmd, cwd)
    exe = find_tool(tool)
    if exe is None:
        return VendorResult(False, None, None, f"skipped: {tool} not found\nrun where {tool} is installed: {line}",
                            line)
    from tqdm import tqdm   # deferred: tqdm, only when the tool runs (a skip needs no progress bar)

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [exe, *cmd[1:]] if cmd and cmd[0] == tool else list(cmd)
    last: list[str] = []
    with open(log_path, "w") as log, \
            tqdm(desc=tool, unit=" lines", disable=None if progress is None else not progress, leave=False) as bar:
        log.write(f"# {line}\n")
        log.flush()
        with subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1) as proc:
            for text in proc.stdout:
                log.write(text)
                last.append(text.rstrip("\n"))
                if len(last) > tail:
                    del last[0]
                bar.update(1)
            rc = proc.wait()
    if rc == 0:
        msg = f"{tool} finished (exit 0): log {log_path}"
    else:
        msg = f"{tool} failed (exit {rc}): log {log_path}\n" + "\n".join(last)
    return VendorResult(True, rc, log_path, msg, line)
