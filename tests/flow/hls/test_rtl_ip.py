"""``flow.build --engine rtl``: the RTL engine packaged as a Vivado IP and the block design taking it, run in
tclsh against recording test doubles of Vivado (no Vivado here), and the build's refusal of what the RTL
engine cannot run yet.

The doubles are test_tcl.py's (FAKE_VENDOR_TOOLS_TCL) plus ``FAKE_IPX_TCL`` below: a model of the IP
packager's objects (core, bus interfaces, port maps, bus parameters, memory maps, address blocks, registers,
address spaces) that records every call and, at ``ipx::save_core``, the IP as saved (every object and
property, as ``=ipx`` facts) and a component.xml naming its VLNV, which the Vivado double's
``update_ip_catalog`` then finds. ``ipx::package_project`` plays Vivado's inference (interfaces named by the
port prefixes), so the script's removal of what was inferred is exercised. ``ipx::check_integrity`` refuses
an interface without port maps, a slave AXI without its memory map and a master AXI without its address space.
What the doubles cannot say is whether real Vivado accepts the commands.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from engine_io import hwh
from flow.build import rtl_ip
from flow.compile.engine import EngineConfig
from flow.hls import vendor
from flow.rtl import engine_rtl
from test_tcl import FAKE_VENDOR_TOOLS_TCL, TCLSH, TclRun, _fake_tools, opt

REPO = Path(__file__).resolve().parents[3]
HASH = EngineConfig().hash()
pytestmark = pytest.mark.skipif(TCLSH is None, reason="tclsh not installed: apt-get install tcl")

FAKE_IPX_TCL = r'''
# Test double of Vivado's IP packager (ipx::*), tests/flow/hls/test_rtl_ip.py. Not a vendor tool.
namespace eval ::ipx {}
namespace eval ::fake::ipx {
    variable objs {}
    variable props [dict create]
    variable root ""
}
# handles: ipx:core, ipx:busif:B, ipx:pm:B:L, ipx:bp:B:P, ipx:mm:M, ipx:ab:M:A, ipx:reg:M:A:R, ipx:as:S
proc ::fake::ipx::add {handle} {
    variable objs
    if {$handle in $objs} {
        error "[lindex [split $handle :] 1] [lindex [split $handle :] end] exists"
    }
    lappend objs $handle
    return $handle
}
proc ::fake::ipx::need {handle what} {
    if {$handle ni $::fake::ipx::objs} {
        error "$what: no object $handle"
    }
}
# removing an object removes what it holds (a bus interface its port maps and parameters, a memory map its
# address blocks and their registers)
proc ::fake::ipx::remove {handle} {
    variable objs
    need $handle remove
    lassign [split $handle :] unused kind name
    set children [dict get {busif {pm bp} mm {ab reg} as {}} $kind]
    set keep {}
    foreach o $objs {
        set held 0
        foreach c $children {
            if {[string match "ipx:$c:$name:*" $o]} {
                set held 1
            }
        }
        if {$o ne $handle && !$held} {
            lappend keep $o
        }
    }
    set objs $keep
}
proc ::fake::ipx::core {arglist} {
    set c [lindex $arglist end]
    if {$c ne "ipx:core"} {
        error "not the current core: $c"
    }
}
# positional words, skipping the value of the flags these commands take
proc ::fake::ipx::pos {arglist} {
    set out {}
    for {set i 0} {$i < [llength $arglist]} {incr i} {
        set a [lindex $arglist $i]
        if {$a in {-of_objects -root_dir -vendor -library -taxonomy -set_current}} {
            incr i
        } elseif {![string match -* $a]} {
            lappend out $a
        }
    }
    return $out
}
proc ::fake::ipx::of {kind arglist} {
    set of [::fake::opt $arglist -of_objects]
    if {$of eq ""} {
        error "ipx::get_$kind: -of_objects missing"
    }
    set pattern [lindex [pos $arglist] 0]
    if {$pattern eq ""} {
        set pattern *
    }
    set out {}
    foreach o $::fake::ipx::objs {
        set parts [split $o :]
        if {[lindex $parts 1] eq $kind && [string match $pattern [lindex $parts end]]} {
            lappend out $o
        }
    }
    return $out
}

::fake::stub ipx::package_project {
    if {$::fake::top eq ""} {
        error "ipx::package_project: no top set in the project"
    }
    set ::fake::ipx::root [::fake::opt $args -root_dir]
    if {$::fake::ipx::root eq ""} {
        error "ipx::package_project: -root_dir missing"
    }
    set ::fake::ipx::objs {}
    set ::fake::ipx::props [dict create]
    ::fake::ipx::add ipx:core
    dict set ::fake::ipx::props ipx:core [dict create vendor [::fake::opt $args -vendor] \
        library [::fake::opt $args -library] name $::fake::top version 1.0]
    # Vivado's inference, roughly: interfaces named after the port prefixes, a memory map, an address space
    foreach b {s_axi_control m_axi_gmem s_axis_in m_axis_out ap_clk ap_rst_n interrupt} {
        ::fake::ipx::add ipx:busif:$b
    }
    ::fake::ipx::add ipx:mm:s_axi_control
    ::fake::ipx::add ipx:ab:s_axi_control:reg0
    ::fake::ipx::add ipx:as:m_axi_gmem
    return ipx:core
}
::fake::stub ipx::current_core {
    ::fake::ipx::need ipx:core ipx::current_core
    return ipx:core
}
foreach kind {bus_interface memory_map address_space} short {busif mm as} {
    ::fake::stub ipx::get_${kind}s "return \[::fake::ipx::of $short \$args\]"
    ::fake::stub ipx::remove_$kind "
        ::fake::ipx::core \$args
        ::fake::ipx::remove ipx:$short:\[lindex \$args 0\]
    "
    ::fake::stub ipx::add_$kind "
        ::fake::ipx::core \$args
        return \[::fake::ipx::add ipx:$short:\[lindex \$args 0\]\]
    "
}
::fake::stub ipx::add_port_map {
    lassign $args logical bi
    ::fake::ipx::need $bi ipx::add_port_map
    return [::fake::ipx::add ipx:pm:[lindex [split $bi :] 2]:$logical]
}
::fake::stub ipx::add_bus_parameter {
    lassign $args name bi
    ::fake::ipx::need $bi ipx::add_bus_parameter
    return [::fake::ipx::add ipx:bp:[lindex [split $bi :] 2]:$name]
}
::fake::stub ipx::add_address_block {
    lassign $args name map
    ::fake::ipx::need $map ipx::add_address_block
    return [::fake::ipx::add ipx:ab:[lindex [split $map :] 2]:$name]
}
::fake::stub ipx::add_register {
    lassign $args name block
    ::fake::ipx::need $block ipx::add_register
    return [::fake::ipx::add ipx:reg:[join [lrange [split $block :] 2 3] :]:$name]
}
::fake::stub ipx::create_xgui_files {
    ::fake::ipx::core $args
}
::fake::stub ipx::update_checksums {
    ::fake::ipx::core $args
}
proc ::fake::ipx::prop {handle key} {
    if {[dict exists $::fake::ipx::props $handle $key]} {
        return [dict get $::fake::ipx::props $handle $key]
    }
    return ""
}
::fake::stub ipx::check_integrity {
    ::fake::ipx::core $args
    foreach bi [::fake::ipx::of busif {-of_objects ipx:core}] {
        set b [lindex [split $bi :] 2]
        if {[llength [lsearch -all -glob $::fake::ipx::objs ipx:pm:$b:*]] == 0} {
            error "check_integrity: bus interface $b has no port maps"
        }
        if {[::fake::ipx::prop $bi abstraction_type_vlnv] eq "xilinx.com:interface:aximm_rtl:1.0"} {
            if {[::fake::ipx::prop $bi interface_mode] eq "slave"
                && "ipx:mm:[::fake::ipx::prop $bi slave_memory_map_ref]" ni $::fake::ipx::objs} {
                error "check_integrity: slave $b without a memory map"
            }
            if {[::fake::ipx::prop $bi interface_mode] eq "master"
                && "ipx:as:[::fake::ipx::prop $bi master_address_space_ref]" ni $::fake::ipx::objs} {
                error "check_integrity: master $b without an address space"
            }
        }
    }
}
::fake::stub ipx::save_core {
    ::fake::ipx::core $args
    foreach o $::fake::ipx::objs {
        ::fake::fact ipx $o
        if {[dict exists $::fake::ipx::props $o]} {
            dict for {k v} [dict get $::fake::ipx::props $o] {
                ::fake::fact ipx_prop $o $k $v
            }
        }
    }
    set c [dict get $::fake::ipx::props ipx:core]
    set vlnv [join [list [dict get $c vendor] [dict get $c library] [dict get $c name] [dict get $c version]] :]
    file mkdir $::fake::ipx::root
    set f [open [file join $::fake::ipx::root component.xml] w]
    puts $f "<fake-component vlnv=\"$vlnv\"/>"
    close $f
}

# set_property / get_property on the packager's objects
rename ::set_property ::fake::set_property_base
proc ::set_property args {
    set obj [lindex $args end]
    if {[string match ipx:* $obj]} {
        ::fake::ipx::need $obj set_property
        if {[llength $args] != 3} {
            error "set_property NAME VALUE OBJECT"
        }
        dict set ::fake::ipx::props $obj [lindex $args 0] [lindex $args 1]
    }
    uplevel 1 [list ::fake::set_property_base {*}$args]
}
rename ::get_property ::fake::get_property_base
proc ::get_property args {
    lassign $args name obj
    if {[string match ipx:* $obj]} {
        ::fake::record get_property $args
        ::fake::ipx::need $obj get_property
        if {$name eq "NAME"} {
            return [lindex [split $obj :] end]
        }
        return [::fake::ipx::prop $obj $name]
    }
    uplevel 1 [list ::fake::get_property_base {*}$args]
}
'''


def run_tcl(tmp: Path, script: Path, *argv: str, board_parts: str = "tul.com.tw:pynq-z2:part0:1.0") -> TclRun:
    """test_tcl.run_tcl with the IP packager's double added to the prelude."""
    tmp.mkdir(parents=True, exist_ok=True)
    prelude = tmp / "fake_vendor_tools.tcl"
    prelude.write_text(FAKE_VENDOR_TOOLS_TCL + FAKE_IPX_TCL)
    driver = tmp / "fake_driver.tcl"
    driver.write_text("source $::env(FAKE_PRELUDE)\nsource $::env(FAKE_SCRIPT)\n")
    log = tmp / "calls.jsonl"
    env = dict(os.environ, FAKE_LOG=str(log), FAKE_PRELUDE=str(prelude), FAKE_SCRIPT=str(script),
               FAKE_BOARD_PARTS=board_parts, FAKE_HWH_IN="gen", FAKE_PROGRESS="100%", FAKE_WNS="0.2")
    r = subprocess.run([TCLSH, str(driver), *argv], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    run = TclRun(r.returncode, r.stdout, r.stderr, [c for c in lines if not c[0].startswith("=")],
                 [c for c in lines if c[0].startswith("=")])
    assert not run.named("__unknown__"), f"commands the test double does not stub: {run.named('__unknown__')}"
    return run


def saved_ip(r: TclRun) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(objects, {object: {property: value}}) of the IP as ipx::save_core saved it."""
    objs = [f[0] for f in r.facts_of("ipx")]
    props: dict[str, dict[str, str]] = {}
    for o, k, v in r.facts_of("ipx_prop"):
        props.setdefault(o, {})[k] = v
    return objs, props


def yosys_ports(rtl_dir: Path, tmp: Path) -> dict[str, tuple[str, int]]:
    """{port: (direction, bits)} of vqhls_engine_top as yosys reads the rendered Verilog (not rtl_ip's parser)."""
    out = tmp / "top.json"
    top = rtl_dir / f"{engine_rtl.TOP}.v"     # the top alone: its units stay unknown cells, its ports are read
    r = subprocess.run(["yosys", "-q", "-p", f"read_verilog {top}; proc; write_json {out}"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ports = json.loads(out.read_text())["modules"][engine_rtl.TOP]["ports"]
    return {n: (p["direction"], len(p["bits"])) for n, p in ports.items()}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The default engine's RTL kit, written as the build writes it, and package_ip.tcl run under the doubles."""
    tmp = tmp_path_factory.mktemp("rtl_ip")
    kit = rtl_ip.write_rtl_kit(tmp / "build", "pynq-z2", EngineConfig())
    r = run_tcl(tmp / "package", kit.package_tcl)
    assert r.returncode == 0, r.stdout + r.stderr
    return kit, r, tmp


def test_package_ip_calls_package_project_with_the_engine_vlnv(packaged):
    kit, r, _ = packaged
    (proj,) = r.named("create_project")
    assert opt(proj, "-part") == "xc7z020clg400-1" and proj[1] == str(kit.rtl_dir / rtl_ip.PACKAGE_PROJECT)
    (add,) = r.named("add_files")
    assert add[0] == "-norecurse"
    files = add[1].split()       # one Tcl list (the test's paths hold no spaces)
    assert sorted(Path(f).name for f in files) == sorted(engine_rtl.engine_sources(EngineConfig()))
    assert all(Path(f).parent == kit.rtl_dir for f in files)
    assert r.props()["sources_1"]["top"] == engine_rtl.TOP
    (pkg,) = r.named("ipx::package_project")
    assert opt(pkg, "-root_dir") == str(kit.ip_repo) and "-import_files" in pkg
    assert (opt(pkg, "-vendor"), opt(pkg, "-library")) == (hwh.IP_VENDOR, hwh.IP_LIBRARY)
    # the IP as saved carries the HLS flow's VLNV scheme: vqhls:vqhls:vqhls_engine_<hash>:1.0
    _, props = saved_ip(r)
    core = props["ipx:core"]
    vlnv = ":".join(core[k] for k in ("vendor", "library", "name", "version"))
    assert vlnv == vendor.engine_vlnv(HASH) == f"vqhls:vqhls:vqhls_engine_{HASH}:1.0"
    assert hwh.hash_of_vlnv(vlnv) == HASH
    assert f'vlnv="{vlnv}"' in (kit.ip_repo / "component.xml").read_text()
    order = r.commands()
    assert order.index("ipx::check_integrity") < order.index("ipx::save_core") < order.index("close_project")


def test_every_port_of_the_top_is_in_one_interface(packaged):
    """The ports of vqhls_engine_top as yosys reads the rendered Verilog: each in exactly one port map, with the
    direction its logical port has on that bus; no port map names anything else; nothing inferred is left."""
    if shutil.which("yosys") is None:
        pytest.skip("yosys not installed")
    kit, r, tmp = packaged
    ports = yosys_ports(kit.rtl_dir, tmp)
    assert len(ports) > 50 and "s_axis_in_tdata" in ports and ports["m_axi_gmem_araddr"] == ("output", 64)
    objs, props = saved_ip(r)
    maps = {}
    for o in objs:
        if o.startswith("ipx:pm:"):
            _, _, bi, logical = o.split(":")
            physical = props[o]["physical_name"]
            assert physical not in maps, f"{physical} in two port maps"
            maps[physical] = (bi, logical)
    assert set(maps) == set(ports)
    busifs = {o.split(":")[2]: props[o] for o in objs if o.startswith("ipx:busif:")}
    assert set(busifs) == {"s_axi_control", "m_axi_gmem", "in_stream", "out_stream", "ap_clk", "ap_rst_n",
                           "interrupt"}        # the HLS IP's names; the inferred s_axis_in / m_axis_out are gone
    # directions: an input of the IP is what the other side drives (independent table: AXI4 / AXI4-Stream specs)
    master_out = {"AWADDR", "AWLEN", "AWSIZE", "AWBURST", "AWVALID", "WDATA", "WSTRB", "WLAST", "WVALID", "BREADY",
                  "ARID", "ARADDR", "ARLEN", "ARSIZE", "ARBURST", "ARCACHE", "ARPROT", "ARVALID", "RREADY",
                  "TDATA", "TVALID", "TLAST", "TKEEP", "TSTRB"}
    for physical, (bi, logical) in maps.items():
        mode = busifs[bi]["interface_mode"]
        if logical in ("CLK", "RST"):
            want = "input"
        elif logical == "INTERRUPT":
            want = "output"
        else:
            want = "output" if (logical in master_out) == (mode == "master") else "input"
        assert ports[physical][0] == want, (physical, bi, logical, mode)
    kinds = {b: p["abstraction_type_vlnv"] for b, p in busifs.items()}
    assert kinds["in_stream"] == kinds["out_stream"] == "xilinx.com:interface:axis_rtl:1.0"
    assert kinds["s_axi_control"] == kinds["m_axi_gmem"] == "xilinx.com:interface:aximm_rtl:1.0"
    assert (busifs["s_axi_control"]["interface_mode"], busifs["m_axi_gmem"]["interface_mode"]) == ("slave", "master")
    assert (busifs["in_stream"]["interface_mode"], busifs["out_stream"]["interface_mode"]) == ("slave", "master")


def test_clock_reset_interrupt_and_the_register_map(packaged):
    _, r, _ = packaged
    objs, props = saved_ip(r)
    param = {o.split(":", 2)[2]: props[o]["value"] for o in objs if o.startswith("ipx:bp:")}   # "busif:PARAM"
    # ap_clk clocks every bus; ap_rst_n is active low
    assert set(param["ap_clk:ASSOCIATED_BUSIF"].split(":")) == {"s_axi_control", "m_axi_gmem", "in_stream",
                                                                "out_stream"}
    assert param["ap_clk:ASSOCIATED_RESET"] == "ap_rst_n"
    assert param["ap_rst_n:POLARITY"] == "ACTIVE_LOW"
    assert param["interrupt:SENSITIVITY"] == "LEVEL_HIGH"
    # s_axi_control: the memory map with the 0x80 block Reg (vivado.tcl assigns s_axi_control/Reg) holding
    # the registers engine_io/hwh.py checks in the .hwh, at engine_io/regmap.py's offsets
    assert props["ipx:busif:s_axi_control"]["slave_memory_map_ref"] == "s_axi_control"
    assert [o for o in objs if o.startswith("ipx:mm:")] == ["ipx:mm:s_axi_control"]
    assert [o for o in objs if o.startswith("ipx:ab:")] == ["ipx:ab:s_axi_control:Reg"]
    block = props["ipx:ab:s_axi_control:Reg"]
    assert int(block["range"], 0) == 0x80 and block["usage"] == "register" and block["width"] == "32"
    regs = {o.split(":")[-1]: props[o] for o in objs if o.startswith("ipx:reg:s_axi_control:Reg:")}
    assert [(n, int(p["address_offset"], 0)) for n, p in regs.items()] == hwh.expected_registers()
    assert regs["status"]["access"] == "read-only" and regs["n_images"]["access"] == "write-only"
    assert regs["CTRL"]["access"] == "read-write" and all(p["size"] == "32" for p in regs.values())
    # m_axi_gmem: the address space vivado.tcl maps DDR into
    assert props["ipx:busif:m_axi_gmem"]["master_address_space_ref"] == "Data_m_axi_gmem"
    assert [o for o in objs if o.startswith("ipx:as:")] == ["ipx:as:Data_m_axi_gmem"]
    assert props["ipx:as:Data_m_axi_gmem"]["range"] == "16E"


def test_the_registers_as_a_hwh_pass_the_bundle_check(packaged):
    """A .hwh written from the packaged register block (the form Vivado's handoff gives an IP's IP-XACT
    registers: ADDRESSBLOCK INTERFACE=, REGISTER NAME=, PROPERTY ADDRESS_OFFSET) passes engine_io.hwh's
    check of the bundle; one register renamed is refused. Modelled: no Vivado wrote this .hwh."""
    _, r, _ = packaged
    objs, props = saved_ip(r)
    core = props["ipx:core"]
    vlnv = ":".join(core[k] for k in ("vendor", "library", "name", "version"))

    def hwh_xml(rename: dict[str, str]) -> bytes:
        regs = "".join(f'<REGISTER NAME="{rename.get(o.split(":")[-1], o.split(":")[-1])}"><PROPERTIES>'
                       f'<PROPERTY NAME="ADDRESS_OFFSET" VALUE="{props[o]["address_offset"]}"/>'
                       f'<PROPERTY NAME="SIZE" VALUE="{props[o]["size"]}"/></PROPERTIES></REGISTER>'
                       for o in objs if o.startswith("ipx:reg:"))
        rng = props["ipx:ab:s_axi_control:Reg"]["range"]
        return (f'<EDKSYSTEM><MODULES><MODULE INSTANCE="{vendor.ENGINE_CELL}" VLNV="{vlnv}">'
                f'<ADDRESSBLOCKS><ADDRESSBLOCK INTERFACE="s_axi_control" RANGE="{rng}"><REGISTERS>{regs}'
                f'</REGISTERS></ADDRESSBLOCK></ADDRESSBLOCKS></MODULE></MODULES></EDKSYSTEM>').encode()

    # engine_io.hwh reads PROPERTY children of REGISTER directly; the handoff nests them: give both forms
    flat = hwh_xml({}).replace(b"<PROPERTIES>", b"").replace(b"</PROPERTIES>", b"")
    ET.fromstring(flat)
    ip = hwh.check_engine(flat, HASH)
    assert ip.vlnv == vendor.engine_vlnv(HASH)
    bad = hwh_xml({"status": "status_reg"}).replace(b"<PROPERTIES>", b"").replace(b"</PROPERTIES>", b"")
    with pytest.raises(hwh.HwhError, match="register status missing"):
        hwh.check_engine(bad, HASH)


def test_block_design_takes_the_rtl_ip(packaged):
    """vivado.tcl, rendered for the RTL IP, finds it in ../rtl/ip by its VLNV and connects exactly the interfaces
    the IP declares, assigns its register block and maps DDR into its master's address space."""
    kit, pkg, tmp = packaged
    r = run_tcl(tmp / "vivado", kit.vivado_tcl)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.facts_of("ip_repo") == [[str(kit.ip_repo.resolve())]]
    eng = vendor.ENGINE_CELL
    assert r.cells()[eng] == vendor.engine_vlnv(HASH)
    objs, _ = saved_ip(pkg)
    declared = {o.split(":")[2] for o in objs if o.startswith("ipx:busif:")}
    used = {p.split("/")[2] for net in r.named("connect_bd_intf_net") + r.named("connect_bd_net") for p in net
            if p.startswith(f"/{eng}/")}
    assert used == declared - {"interrupt"}    # the block design leaves the interrupt open, as for the HLS IP
    segs = [a[-1] for a in r.named("assign_bd_address")]
    assert f"/{eng}/s_axi_control/{rtl_ip.REG_BLOCK}" in segs
    spaces = [opt(a, "-target_address_space") for a in r.named("assign_bd_address")]
    assert f"/{eng}/{rtl_ip.MASTER_SPACE}" in spaces
    assert (kit.bitstream_dir / "vqhls.bit").is_file() and (kit.bitstream_dir / "vqhls.hwh").is_file()
    # its messages name the packager, not Vitis HLS
    text = kit.vivado_tcl.read_text()
    assert "vitis" not in text.lower() and "package_ip.tcl" in text


def test_block_design_without_the_packaged_ip_says_how_to_make_it(tmp_path):
    kit = rtl_ip.write_rtl_kit(tmp_path / "b", "pynq-z2", EngineConfig())
    r = run_tcl(tmp_path / "run", kit.vivado_tcl)
    assert r.returncode == 1 and "vivado -mode batch -source package_ip.tcl in rtl/" in r.stderr
    assert "create_project" not in r.commands()


def test_package_ip_refuses_a_missing_source(tmp_path):
    kit = rtl_ip.write_rtl_kit(tmp_path / "b", "pynq-z2", EngineConfig())
    (kit.rtl_dir / "vqhls_loader.v").unlink()
    r = run_tcl(tmp_path / "run", kit.package_tcl)
    assert r.returncode == 1 and "missing source" in r.stderr and "vqhls_loader.v" in r.stderr
    assert "ipx::package_project" not in r.commands()


def test_a_port_no_interface_takes_is_refused():
    ports = rtl_ip.top_ports(engine_rtl.engine_sources(EngineConfig())[f"{engine_rtl.TOP}.v"])
    rtl_ip.port_maps(ports)
    with pytest.raises(rtl_ip.RtlIpError, match="debug_state .no bus interface takes it."):
        rtl_ip.port_maps({**ports, "debug_state": ("output", 4)})
    with pytest.raises(rtl_ip.RtlIpError, match="s_axis_in_tready is an input"):
        rtl_ip.port_maps({**ports, "s_axis_in_tready": ("input", 1)})
    with pytest.raises(rtl_ip.RtlIpError, match="no port for the interface interrupt"):
        rtl_ip.port_maps({k: v for k, v in ports.items() if k != "interrupt"})


def fake_vivado(tmp: Path) -> dict[str, str]:
    """A bin folder whose ``vivado`` runs its -source script in tclsh under the doubles (test_tcl.FAKE_TOOL_SH),
    and the environment that puts it first on PATH (each script's calls in $FAKE_LOG_DIR/vivado.jsonl)."""
    return _fake_tools(tmp, ("vivado",), FAKE_IPX_TCL)


def test_rtl_kit_runs_after_a_move(tmp_path):
    """rtl/, vivado/ and vendor/ moved elsewhere run there with the one documented command (vivado doubled):
    the packager, then the block design; the bitstream and handoff land in the new place only."""
    old = tmp_path / "build_here"
    rtl_ip.write_rtl_kit(old, "pynq-z2", EngineConfig())
    for p in old.rglob("*"):
        if p.is_file():
            assert str(old).encode() not in p.read_bytes(), p
    new = tmp_path / "elsewhere"
    shutil.move(str(old), str(new))
    env = fake_vivado(tmp_path / "tools")
    logs = Path(env["FAKE_LOG_DIR"])
    boards = tmp_path / "boards"
    boards.mkdir()
    r = subprocess.run(["sh", str(new / "vendor" / "run_vendor.sh"), f"board_repo={boards}"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    ran = [line.split(" ", 1)[1].rsplit(" ", 1) for line in (logs / "scripts.txt").read_text().splitlines()]
    assert [Path(cwd) / s for cwd, s in ran] == [new / "rtl" / "package_ip.tcl", new / "vivado" / "vivado.tcl"]
    assert (new / "rtl" / "ip" / "component.xml").is_file()
    assert (new / "vivado" / "out" / "vqhls.bit").is_file() and (new / "vivado" / "out" / "vqhls.hwh").is_file()
    assert not old.exists()
    # a bad argument: refused before any tool runs
    r = subprocess.run(["sh", str(new / "vendor" / "run_vendor.sh"), "hls=vitis_hls"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown argument 'hls=vitis_hls'" in r.stderr


# ---------------------------------------------------------------------------
# the build: --engine rtl
# ---------------------------------------------------------------------------
def test_the_rule_of_what_the_rtl_engine_runs():
    """engine_rtl.unsupported is the one statement of the rule (run_engine and flow.build both call it): the RTL
    engine runs every op of a placed Program (streamed conv weights and PQ LUTs streamed per pixel included)."""
    import numpy as np

    from flow.compile.layout import place
    from hls_testlib import lenet_program, pq_program

    prog = place(lenet_program(np.random.default_rng(0)), EngineConfig())   # every op resident on the default
    assert engine_rtl.unsupported(prog) is None
    conv = next(i for i, op in enumerate(prog.ops) if op.opcode == 1)
    streamed = replace(prog, ops=[replace(op, resident=0) if i == conv else op for i, op in enumerate(prog.ops)])
    assert engine_rtl.unsupported(streamed) is None            # streamed weights: the RTL engine loads them per tile
    pq_engine = replace(EngineConfig(), pq=True)
    pq = place(pq_program(np.random.default_rng(1), H=5, W=5, C=8, OC=12, K=3, pad=1, v=9, Kp=16), pq_engine)
    k = next(i for i, op in enumerate(pq.ops) if op.opcode == 4)
    assert pq.ops[k].lut_resident and engine_rtl.unsupported(pq) is None   # a small LUT: on chip, runs
    rows = replace(pq, ops=[replace(op, lut_resident=0) if i == k else op for i, op in enumerate(pq.ops)])
    assert engine_rtl.unsupported(rows) is None                # streamed LUT rows: the RTL engine reads them per pixel
    # the build's refusal is the rule's message (none today)
    from flow.build.stages import rtl_refusal

    assert rtl_refusal(prog) is None and rtl_refusal(rows) is None


def test_build_stages_with_engine_rtl_run_no_vitis(tmp_path, monkeypatch):
    """The vitis stage of an --engine rtl build packages the IP with Vivado (no Vitis HLS, no hls/ needed), the
    vivado stage builds the block design from it; without Vivado both print the handoff to run elsewhere."""
    from flow.build import stages
    from flow.build.options import BuildOptions

    env = fake_vivado(tmp_path / "tools")
    for k in ("PATH", "FAKE_PRELUDE", "FAKE_DRIVER", "FAKE_LOG_DIR", "FAKE_BOARD_PARTS", "FAKE_HWH_IN",
              "FAKE_PROGRESS", "FAKE_WNS"):
        monkeypatch.setenv(k, env[k])
    out = tmp_path / "out"
    out.mkdir()
    b = stages.Build(opts=BuildOptions(engine="rtl", out=str(out)), out=out, engine=EngineConfig())
    stages.stage_vitis(b)
    stages.stage_vivado(b)
    assert set(b.vendor) == {stages.RTL_IP_TOOL, "vivado"} and all(res.ok for res in b.vendor.values())
    ran = [line.split(" ", 1)[1].rsplit(" ", 1) for line in
           (Path(env["FAKE_LOG_DIR"]) / "scripts.txt").read_text().splitlines()]
    assert [Path(cwd) / sc for cwd, sc in ran] == [out / "rtl" / "package_ip.tcl", out / "vivado" / "vivado.tcl"]
    assert (out / "rtl" / "ip" / "component.xml").is_file() and (out / "vivado" / "out" / "vqhls.bit").is_file()
    assert not (out / "hls").exists() and not (out / "vitis.log").exists()
    assert (out / stages.RTL_IP_LOG).is_file()
    # no Vivado: the skip line and the one command that runs the rtl/ + vivado/ + vendor/ handoff elsewhere
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    b2 = stages.Build(opts=BuildOptions(engine="rtl", out=str(tmp_path / "out2")), out=tmp_path / "out2",
                      engine=EngineConfig())
    stages.stage_vitis(b2)
    msg = b2.vendor[stages.RTL_IP_TOOL].message
    assert msg.startswith("skipped: vivado not found\nrun where Vivado is installed (copy the build's rtl/, "
                          "vivado/ and vendor/ folders together): sh ") and "Vitis" not in msg
    assert (tmp_path / "out2" / "vendor" / "run_vendor.sh").is_file()


def _cli(tmp_path, *args):
    env = dict(os.environ, VQHLS_CACHE=str(tmp_path / "cache"), OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "flow.build", *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_engine_flag_takes_hls_or_rtl(tmp_path):
    r = _cli(tmp_path, "--engine", "verilog")
    assert r.returncode == 2 and "invalid choice: 'verilog'" in r.stderr
