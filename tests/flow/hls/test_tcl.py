"""The generated Tcl, run in tclsh against a recording test double of Vitis HLS and Vivado.

No vendor tool runs here. ``FAKE_VENDOR_TOOLS_TCL`` (below) is a test double: a Tcl prelude that
defines a stub for every Vitis HLS / Vivado command the scripts use. Each stub appends the call
(command + arguments, one JSON array per line) to a log, keeps the little state the scripts query
(cells, properties, the project and run directories) and answers with plausible values; any command
that is not stubbed fails the script (``unknown`` is replaced), so a typo or a new vendor command
fails the test. The stubs also play the vendor tools' file effects the scripts depend on:
``export_design`` writes the IP repository (component.xml with the exported VLNV) that the Vivado
script's ``update_ip_catalog`` finds, ``launch_runs`` writes a bitstream and a hardware handoff where
Vivado puts them, ``report_*`` write their files.

What the stubs cannot say is whether real Vivado accepts the commands; the pin names the block design
uses are checked against the tables in ``XILINX_PINS`` (the IP catalog's names) and, for the engine,
against the interfaces its HLS source declares.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from flow.boards import get_board
from flow.compile.engine import EngineConfig
from flow.hls import cycle_counter, vendor
from flow.hls.project import write_project
from engine_io import hwh

HASH = EngineConfig().hash()

TCLSH = shutil.which("tclsh")
pytestmark = pytest.mark.skipif(TCLSH is None, reason="tclsh not installed: apt-get install tcl")

# ---------------------------------------------------------------------------
# the test double
# ---------------------------------------------------------------------------
FAKE_VENDOR_TOOLS_TCL = r'''
# Test double of the Vitis HLS / Vivado Tcl commands (tests/flow/hls/test_tcl.py). Not a vendor tool.
namespace eval ::fake {
    variable log [open $::env(FAKE_LOG) w]
    fconfigure $log -encoding utf-8 -translation lf
    variable catalog {
        xilinx.com:ip:processing_system7:5.5 xilinx.com:ip:zynq_ultra_ps_e:3.5 xilinx.com:ip:axi_dma:7.1
        xilinx.com:ip:axi_interconnect:2.1 xilinx.com:ip:smartconnect:1.0 xilinx.com:ip:proc_sys_reset:5.0
    }
    variable board_parts $::env(FAKE_BOARD_PARTS)
    variable cells [dict create]
    variable segs {}
    variable hls_project ""
    variable export_vlnv ""
    variable project_name ""
    variable project_dir ""
    variable bd_name ""
    variable ip_repo_paths {}
    variable top ""
    variable value_flags {-part -type -vlnv -target_address_space -offset -range -rule -config -dict -files
                          -to_step -jobs -file -max_paths -cflags -name -period -format -flow -argv
                          -trace_level -rtl -vendor -library -ipname -version -fileset -flow_target
                          -description -display_name}
}

proc ::fake::json {s} {
    return "\"[string map [list \\ \\\\ \" \\\" \n \\n \r \\r \t \\t] $s]\""
}

proc ::fake::record {name arglist} {
    variable log
    set parts [list [json $name]]
    foreach a $arglist {
        lappend parts [json $a]
    }
    puts $log "\[[join $parts {, }]\]"
    flush $log
}

# a fact the double derived from a call (a property set, a cell created): logged as ["=kind", ...]
proc ::fake::fact {kind args} {
    record "=$kind" $args
}

proc ::fake::stub {name body} {
    proc ::$name args "::fake::record [list $name] \$args\n$body"
}

# the value after flag, or default
proc ::fake::opt {arglist flag {default ""}} {
    set i [lsearch -exact $arglist $flag]
    if {$i < 0} {
        return $default
    }
    return [lindex $arglist [expr {$i + 1}]]
}

proc ::fake::positional {arglist} {
    variable value_flags
    set out {}
    for {set i 0} {$i < [llength $arglist]} {incr i} {
        set a [lindex $arglist $i]
        if {[string match -* $a]} {
            if {$a in $value_flags} {
                incr i
            }
        } else {
            lappend out $a
        }
    }
    return $out
}

proc ::fake::has_cell {path} {
    variable cells
    return [dict exists $cells [lindex [split [string trimleft $path /] /] 0]]
}

# ---- unknown commands fail -----------------------------------------------------------------
rename unknown ::fake::_orig_unknown
proc unknown args {
    ::fake::record __unknown__ $args
    error "test double: command not stubbed: [lindex $args 0]"
}

# ---- Vitis HLS -------------------------------------------------------------------------------
::fake::stub open_project {
    set ::fake::hls_project [lindex [::fake::positional $args] 0]
}
::fake::stub set_top {}
::fake::stub add_files {}
::fake::stub open_solution {}
::fake::stub set_part {}
::fake::stub create_clock {}
::fake::stub config_interface {}
::fake::stub config_export {
    set ::fake::export_vlnv [join [list [::fake::opt $args -vendor] [::fake::opt $args -library] \
                                        [::fake::opt $args -ipname] [::fake::opt $args -version]] :]
}
::fake::stub csim_design {}
::fake::stub csynth_design {}
::fake::stub cosim_design {}
::fake::stub export_design {
    set ip [file join [pwd] $::fake::hls_project solution1 impl ip]
    file mkdir $ip
    set f [open [file join $ip component.xml] w]
    puts $f "<fake-component vlnv=\"$::fake::export_vlnv\"/>"
    close $f
    if {[::fake::opt $args -flow] eq "impl"} {
        set rpt [file join [pwd] $::fake::hls_project solution1 impl report verilog]
        file mkdir $rpt
        close [open [file join $rpt vqhls_engine_export.rpt] w]
    }
}

# ---- Vivado: project, catalog ------------------------------------------------------------
::fake::stub set_param {}
::fake::stub create_project {
    set pos [::fake::positional $args]
    if {[llength $pos] != 2 || [::fake::opt $args -part] eq ""} {
        error "create_project NAME DIR -part PART"
    }
    set ::fake::project_name [lindex $pos 0]
    set ::fake::project_dir [file normalize [lindex $pos 1]]
    file mkdir $::fake::project_dir
    return $::fake::project_name
}
::fake::stub get_board_parts {
    set out {}
    foreach bp $::fake::board_parts {
        if {[string match [lindex [::fake::positional $args] 0] $bp]} {
            lappend out $bp
        }
    }
    return $out
}
::fake::stub current_project {
    return $::fake::project_name
}
::fake::stub current_fileset {
    return sources_1
}
::fake::stub update_ip_catalog {
    foreach dir $::fake::ip_repo_paths {
        set xml [file join $dir component.xml]
        ::fake::fact ip_repo $dir
        if {[file exists $xml]} {
            set f [open $xml]
            regexp {vlnv="([^"]*)"} [read $f] unused vlnv
            close $f
            lappend ::fake::catalog $vlnv
        }
    }
}
::fake::stub get_ipdefs {
    set out {}
    foreach v $::fake::catalog {
        if {[string match [lindex [::fake::positional $args] 0] $v]} {
            lappend out $v
        }
    }
    return $out
}
::fake::stub set_property {
    if {[lindex $args 0] eq "-dict"} {
        set pairs [lindex $args 1]
        set objs [lrange $args 2 end]
        if {[llength $pairs] % 2} {
            error "set_property -dict: odd-length list"
        }
    } else {
        if {[llength $args] != 3} {
            error "set_property NAME VALUE OBJECT"
        }
        set pairs [lrange $args 0 1]
        set objs [lrange $args 2 2]
    }
    if {[llength $objs] != 1} {
        error "set_property: one object expected, got '$objs'"
    }
    set obj [lindex $objs 0]
    if {[string match /* $obj] && ![::fake::has_cell $obj]} {
        error "set_property on a cell that does not exist: $obj"
    }
    foreach {k v} $pairs {
        ::fake::fact prop $obj $k $v
        if {$k eq "ip_repo_paths"} {
            set ::fake::ip_repo_paths $v
        }
        if {$k eq "top"} {
            set ::fake::top $v
        }
    }
}

# ---- Vivado: block design -----------------------------------------------------------------
::fake::stub create_bd_design {
    set ::fake::bd_name [lindex [::fake::positional $args] 0]
}
::fake::stub create_bd_cell {
    set vlnv [::fake::opt $args -vlnv]
    set name [lindex [::fake::positional $args] 0]
    if {[::fake::opt $args -type] ne "ip"} {
        error "create_bd_cell: -type ip expected"
    }
    set full ""
    foreach v $::fake::catalog {
        if {$v eq $vlnv || ([llength [split $vlnv :]] == 3 && [string match $vlnv:* $v])} {
            set full $v
        }
    }
    if {$full eq ""} {
        error "create_bd_cell: no IP $vlnv in the catalog"
    }
    if {[dict exists $::fake::cells $name]} {
        error "create_bd_cell: $name exists"
    }
    dict set ::fake::cells $name $full
    ::fake::fact cell $name $full
    switch -glob -- $full {
        xilinx.com:ip:processing_system7:* {
            foreach i {0 1 2 3} {
                lappend ::fake::segs /$name/S_AXI_HP$i/HP${i}_DDR_LOWOCM
            }
        }
        xilinx.com:ip:zynq_ultra_ps_e:* {
            foreach {gp short} {0 HPC0 1 HPC1 2 HP0 3 HP1 4 HP2 5 HP3} {
                foreach seg {DDR_LOW DDR_HIGH LPS_OCM QSPI} {
                    lappend ::fake::segs /$name/SAXIGP$gp/${short}_$seg
                }
            }
        }
    }
    return /$name
}
::fake::stub apply_bd_automation {
    if {[::fake::opt $args -rule] eq "" || [::fake::opt $args -config] eq ""} {
        error "apply_bd_automation -rule RULE -config CONFIG OBJECT"
    }
    foreach o [::fake::positional $args] {
        if {![::fake::has_cell $o]} {
            error "apply_bd_automation: no cell $o"
        }
    }
}
proc ::fake::objects {arglist depth} {
    set out {}
    foreach p [::fake::positional $arglist] {
        set p /[string trimleft $p /]
        if {[::fake::has_cell $p] && [llength [split [string trimleft $p /] /]] == $depth} {
            lappend out $p
        }
    }
    return $out
}
::fake::stub get_bd_cells {
    return [::fake::objects $args 1]
}
::fake::stub get_bd_pins {
    return [::fake::objects $args 2]
}
::fake::stub get_bd_intf_pins {
    return [::fake::objects $args 2]
}
::fake::stub get_bd_addr_spaces {
    return [::fake::objects $args 2]
}
::fake::stub get_bd_addr_segs {
    set out {}
    foreach p [::fake::positional $args] {
        set p /[string trimleft $p /]
        set ps_seg 0
        foreach s $::fake::segs {
            if {[string match $p $s]} {
                lappend out $s
            }
            if {[string match [join [lrange [split $s /] 0 2] /]/* $p]} {
                set ps_seg 1
            }
        }
        if {!$ps_seg && ![string match *\\** $p] && [::fake::has_cell $p] && [llength [split $p /]] == 4} {
            lappend out $p
        }
    }
    return $out
}
proc ::fake::check_objects {cmd objs n} {
    if {$n > 0 && [llength $objs] != $n || [llength $objs] < 2} {
        error "$cmd: [llength $objs] objects"
    }
    foreach o $objs {
        if {![string match /* $o] || ![::fake::has_cell $o]} {
            error "$cmd: '$o' is not a block-design object"
        }
    }
}
::fake::stub connect_bd_intf_net {
    ::fake::check_objects connect_bd_intf_net $args 2
}
::fake::stub connect_bd_net {
    ::fake::check_objects connect_bd_net $args 0
}
::fake::stub assign_bd_address {
    set space [::fake::opt $args -target_address_space]
    set segs [::fake::positional $args]
    if {$space eq "" || [llength $segs] != 1} {
        error "assign_bd_address -target_address_space SPACE SEGMENT"
    }
}
::fake::stub exclude_bd_addr_seg {}
::fake::stub regenerate_bd_layout {}
::fake::stub validate_bd_design {}
::fake::stub save_bd_design {}

# ---- Vivado: files, runs, reports ----------------------------------------------------------
::fake::stub get_files {
    set bd $::fake::bd_name
    set path [file join $::fake::project_dir $::fake::project_name.srcs sources_1 bd $bd $bd.bd]
    if {[string match [lindex [::fake::positional $args] 0] [file tail $path]]} {
        return $path
    }
    return ""
}
::fake::stub make_wrapper {
    if {[::fake::opt $args -files] eq "" || "-top" ni $args} {
        error "make_wrapper -files BD -top"
    }
    set bd $::fake::bd_name
    set dir [file join $::fake::project_dir $::fake::project_name.gen sources_1 bd $bd hdl]
    file mkdir $dir
    set path [file join $dir ${bd}_wrapper.v]
    close [open $path w]
    return $path
}
::fake::stub update_compile_order {}
::fake::stub launch_runs {
    set runs [file join $::fake::project_dir $::fake::project_name.runs impl_1]
    file mkdir $runs
    set f [open [file join $runs $::fake::top.bit] w]
    puts $f "fake bitstream of $::fake::top"
    close $f
    set bd $::fake::bd_name
    set hw [file join $::fake::project_dir $::fake::project_name.$::env(FAKE_HWH_IN) sources_1 bd $bd hw_handoff]
    file mkdir $hw
    set f [open [file join $hw $bd.hwh] w]
    puts $f "fake hardware handoff of $bd"
    close $f
}
::fake::stub wait_on_run {}
::fake::stub get_runs {
    return [lindex [::fake::positional $args] 0]
}
::fake::stub open_run {}
::fake::stub get_property {
    lassign $args name obj
    switch -- $name {
        PROGRESS { return $::env(FAKE_PROGRESS) }
        STATUS { return "fake run status" }
        STATS.WNS { return $::env(FAKE_WNS) }
        DIRECTORY {
            if {$obj eq "impl_1"} {
                return [file join $::fake::project_dir $::fake::project_name.runs impl_1]
            }
        }
    }
    error "get_property $name of $obj: not modelled by the test double"
}
proc ::fake::report {arglist} {
    set f [::fake::opt $arglist -file]
    if {$f eq ""} {
        error "report without -file"
    }
    set ch [open $f w]
    puts $ch "fake report"
    close $ch
}
::fake::stub report_utilization {
    ::fake::report $args
}
::fake::stub report_timing_summary {
    ::fake::report $args
}
::fake::stub close_project {}
'''

# Pins of the Xilinx IPs the block design uses, as the Vivado IP catalog names them (AXI DMA PG021,
# AXI Interconnect PG059, SmartConnect PG247, Processor System Reset PG164, PS7 / zynq_ultra_ps_e).
# Interfaces first, then clocks / resets; every clock and reset of a cell is checked to be connected.
XILINX_PINS = {
    "axi_dma": dict(intf={"S_AXI_LITE", "M_AXI_MM2S", "M_AXI_S2MM", "M_AXIS_MM2S", "S_AXIS_S2MM"},
                    clocks={"s_axi_lite_aclk", "m_axi_mm2s_aclk", "m_axi_s2mm_aclk"}, resets={"axi_resetn"},
                    other={"mm2s_introut", "s2mm_introut"}),
    "axi_interconnect": dict(intf={"S00_AXI", "M00_AXI", "M01_AXI"},
                             clocks={"ACLK", "S00_ACLK", "M00_ACLK", "M01_ACLK"},
                             resets={"ARESETN", "S00_ARESETN", "M00_ARESETN", "M01_ARESETN"}, other=set()),
    "smartconnect": dict(intf={"S00_AXI", "S01_AXI", "S02_AXI", "M00_AXI"}, clocks={"aclk"}, resets={"aresetn"},
                         other=set()),
    "proc_sys_reset": dict(intf=set(), clocks={"slowest_sync_clk"}, resets={"ext_reset_in"},
                           other={"peripheral_aresetn", "interconnect_aresetn", "peripheral_reset",
                                  "bus_struct_reset", "mb_reset", "aux_reset_in", "mb_debug_sys_rst", "dcm_locked"}),
}
PS_PINS = {
    "processing_system7": dict(
        intf={"M_AXI_GP0", "M_AXI_GP1", "S_AXI_HP0", "S_AXI_HP1", "S_AXI_HP2", "S_AXI_HP3", "DDR", "FIXED_IO"},
        other={"FCLK_CLK0", "FCLK_RESET0_N", "M_AXI_GP0_ACLK", "M_AXI_GP1_ACLK", "S_AXI_HP0_ACLK",
               "S_AXI_HP1_ACLK", "S_AXI_HP2_ACLK", "S_AXI_HP3_ACLK"}),
    "zynq_ultra_ps_e": dict(
        intf={"M_AXI_HPM0_FPD", "M_AXI_HPM1_FPD", "M_AXI_HPM0_LPD", "S_AXI_HPC0_FPD", "S_AXI_HPC1_FPD",
              "S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD", "S_AXI_HP3_FPD"},
        other={"pl_clk0", "pl_resetn0", "maxihpm0_fpd_aclk", "maxihpm1_fpd_aclk", "maxihpm0_lpd_aclk",
               "saxihpc0_fpd_aclk", "saxihpc1_fpd_aclk", "saxihp0_fpd_aclk", "saxihp1_fpd_aclk",
               "saxihp2_fpd_aclk", "saxihp3_fpd_aclk"}),
}


@dataclass
class TclRun:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    facts: list[list[str]] = field(default_factory=list)

    def named(self, cmd: str) -> list[list[str]]:
        """The argument lists of every call of ``cmd``."""
        return [c[1:] for c in self.calls if c[0] == cmd]

    def commands(self) -> list[str]:
        return [c[0] for c in self.calls]

    def props(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for obj, key, value in self.facts_of("prop"):
            out.setdefault(obj, {})[key] = value
        return out

    def cells(self) -> dict[str, str]:
        return {name: vlnv for name, vlnv in self.facts_of("cell")}

    def facts_of(self, kind: str) -> list[list[str]]:
        return [f[1:] for f in self.facts if f[0] == "=" + kind]


def run_tcl(tmp: Path, script: Path, *argv: str, board_parts: str = "tul.com.tw:pynq-z2:part0:1.0 "
            "xilinx.com:zcu104:part0:1.1", hwh_in: str = "gen", progress: str = "100%",
            wns: str = "0.412") -> TclRun:
    """Run ``script`` in tclsh after the test double's prelude; ``argv`` as the tool's -tclargs."""
    tmp.mkdir(parents=True, exist_ok=True)
    prelude = tmp / "fake_vendor_tools.tcl"
    prelude.write_text(FAKE_VENDOR_TOOLS_TCL)
    driver = tmp / "fake_driver.tcl"
    driver.write_text("source $::env(FAKE_PRELUDE)\nsource $::env(FAKE_SCRIPT)\n")
    log = tmp / "calls.jsonl"
    env = dict(os.environ, FAKE_LOG=str(log), FAKE_PRELUDE=str(prelude), FAKE_SCRIPT=str(script),
               FAKE_BOARD_PARTS=board_parts, FAKE_HWH_IN=hwh_in, FAKE_PROGRESS=progress, FAKE_WNS=wns)
    r = subprocess.run([TCLSH, str(driver), *argv], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    calls = [c for c in lines if not c[0].startswith("=")]
    facts = [c for c in lines if c[0].startswith("=")]
    run = TclRun(r.returncode, r.stdout, r.stderr, calls, facts)
    assert not run.named("__unknown__"), f"commands the test double does not stub: {run.named('__unknown__')}"
    return run


def opt(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


# ---------------------------------------------------------------------------
# Vitis HLS: build.tcl
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hls_project(tmp_path_factory):
    """The default engine's project with its C-simulation vectors (tb/data), as the build writes it."""
    import numpy as np

    from flow.compile.program_exec import run_program
    from hls_testlib import lenet_program, rand_inputs

    rng = np.random.default_rng(0)
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 2)
    return write_project(EngineConfig(), tmp_path_factory.mktemp("hls") / "p", program=prog, inputs=x,
                         expected=run_program(prog, x))


def _vitis(project, tmp: Path, *argv: str) -> TclRun:
    shutil.rmtree(project.path / "vqhls_prj", ignore_errors=True)     # what an earlier run's export_design left
    return run_tcl(tmp, project.build_tcl, *argv)


def test_build_tcl_default_runs_csim_and_csynth(hls_project, tmp_path):
    r = _vitis(hls_project, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.commands() == ["open_project", "set_top", "add_files", "add_files", "add_files", "add_files",
                            "open_solution", "set_part", "create_clock", "config_interface", "config_export",
                            "csim_design", "csynth_design"]
    assert r.named("open_project") == [["-reset", "vqhls_prj"]]
    assert r.named("set_top") == [["vqhls_engine"]]
    assert r.named("open_solution") == [["-reset", "solution1", "-flow_target", "vivado"]]
    assert r.named("set_part") == [["xc7z020clg400-1"]]
    (clock,) = r.named("create_clock")
    assert float(opt(clock, "-period")) == 10.0 and opt(clock, "-name") == "default"      # 100 MHz
    assert r.named("config_interface") == [["-m_axi_addr64"]]
    (export,) = r.named("config_export")
    assert opt(export, "-format") == "ip_catalog" and opt(export, "-rtl") == "verilog"
    # the IP's VLNV carries the engine config's hash, as engine_io/hwh.py reads it back from the .hwh
    vlnv = ":".join(opt(export, f) for f in ("-vendor", "-library", "-ipname", "-version"))
    assert vlnv == vendor.engine_vlnv(HASH) == f"vqhls:vqhls:vqhls_engine_{HASH}:1.0"
    assert hwh.hash_of_vlnv(vlnv) == HASH and HASH in opt(export, "-description")
    src, blackbox, tb, data = r.named("add_files")
    assert src[0] == "firmware/top.cpp" and "-std=c++14" in opt(src, "-cflags")
    # the real cycle counter: the RTL blackbox's JSON; the header declares it (no inline C model) under the macro
    assert blackbox == ["-blackbox", cycle_counter.JSON]
    assert f"-D{cycle_counter.MACRO}" in opt(src, "-cflags").split() and opt(tb, "-cflags") == opt(src, "-cflags")
    # its C model is not a design source (the JSON gives it to C-simulation; synthesis takes the Verilog)
    assert not any(cycle_counter.C_MODEL in " ".join(a) for a in r.named("add_files"))
    assert tb[:2] == ["-tb", "tb/tb.cpp"] and data == ["-tb", "tb/data"]
    # the testbench runs on the project's vectors
    (csim,) = r.named("csim_design")
    argv = opt(csim, "-argv").split()
    assert [Path(a).name for a in argv] == ["program.bin", "inputs.bin", "outputs.bin", "expected.bin"]
    assert all(Path(a).parent == hls_project.data_dir for a in argv)


def test_build_tcl_cosim_export_impl(hls_project, tmp_path):
    r = _vitis(hls_project, tmp_path, "csim=0", "cosim=1", "impl=1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.commands()[-3:] == ["csynth_design", "cosim_design", "export_design"]
    assert "csim_design" not in r.commands()
    (cosim,) = r.named("cosim_design")
    assert opt(cosim, "-trace_level") == "none" and len(opt(cosim, "-argv").split()) == 4
    assert r.named("export_design") == [["-format", "ip_catalog", "-flow", "impl"]]
    assert "post-route report:" in r.stdout
    # the IP repository the Vivado script takes
    assert (vendor.ip_repo_dir(hls_project.path) / "component.xml").is_file()
    # export without impl: plain IP export; synthesis forced on (reset wipes earlier results)
    r = _vitis(hls_project, tmp_path / "b", "csim=0", "synth=0", "export=1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.commands()[-2:] == ["csynth_design", "export_design"]
    assert r.named("export_design") == [["-format", "ip_catalog"]]
    # csynth only; unknown options are reported, not silently taken
    r = _vitis(hls_project, tmp_path / "c", "csim=0", "cosin=1")
    assert r.returncode == 0 and r.commands()[-1] == "csynth_design"
    assert "WARNING: ignoring argument 'cosin=1'" in r.stdout


@pytest.mark.parametrize("flags", [dict(), dict(csim=False, cosim=True), dict(csim=False, impl=True),
                                   dict(csim=False, synth=False, export=True)])
def test_vitis_command_matches_build_tcl(hls_project, tmp_path, flags):
    """vitis_command's -tclargs are options build.tcl takes, and do what they say."""
    cmd = vendor.vitis_command(hls_project.path, **flags)
    assert cmd[:3] == ["vitis_hls", "-f", str(hls_project.build_tcl)] and cmd[3] == "-tclargs"
    r = _vitis(hls_project, tmp_path, *cmd[4:])
    assert r.returncode == 0 and "WARNING" not in r.stdout, r.stdout + r.stderr
    want = dict(dict(csim=True, synth=True, cosim=False, export=False, impl=False), **flags)
    ran = set(r.commands())
    assert ("csim_design" in ran) == want["csim"]
    assert ("csynth_design" in ran) == (want["synth"] or want["cosim"] or want["export"] or want["impl"])
    assert ("cosim_design" in ran) == want["cosim"]
    assert ("export_design" in ran) == (want["export"] or want["impl"])
    assert (["-format", "ip_catalog", "-flow", "impl"] in r.named("export_design")) == want["impl"]


def test_build_tcl_refuses_csim_without_vectors(tmp_path):
    proj = write_project(EngineConfig(), tmp_path / "p")
    r = run_tcl(tmp_path / "run", proj.build_tcl)
    assert r.returncode == 1
    assert "ERROR: tb/data/*.bin missing" in r.stdout
    assert "csim_design" not in r.commands() and "csynth_design" not in r.commands()
    # synthesis alone needs no vectors
    r = run_tcl(tmp_path / "run2", proj.build_tcl, "csim=0")
    assert r.returncode == 0 and r.commands()[-1] == "csynth_design", r.stdout + r.stderr


# ---------------------------------------------------------------------------
# the real cycle counter's RTL blackbox (cycle_counter.json) against the files it names
# ---------------------------------------------------------------------------
def _verilog_ports(path: Path, module: str, tmp: Path) -> dict[str, tuple[str, int]]:
    """name -> (direction, bits) of ``module``'s ports, as yosys reads the Verilog."""
    out = tmp / f"{module}.ports.json"
    r = subprocess.run(["yosys", "-q", "-p", f"read_verilog {path}; proc; write_json {out}"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ports = json.loads(out.read_text())["modules"][module]["ports"]
    return {n: (p["direction"], len(p["bits"])) for n, p in ports.items()}


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_cycle_counter_blackbox_json(hls_project, tmp_path):
    """What Vitis reads from cycle_counter.json (UG1399 "JSON File for RTL Blackbox") agrees with the
    files: the names, the C declaration's arguments and directions, every RTL port (and no other), the
    latency, and the resources it declares (re-synthesized here with yosys)."""
    root = hls_project.path
    j = json.loads((root / cycle_counter.JSON).read_text())
    assert j["c_function_name"] == j["rtl_top_module_name"] == cycle_counter.MODULE
    # paths are from the project root: where build.tcl runs vitis_hls and where the JSON lies
    (cfile,) = j["c_files"]
    (rtl,) = j["rtl_files"]
    assert (root / cfile["c_file"]).is_file() and (root / rtl).is_file()
    c_model = (root / cfile["c_file"]).read_text()
    assert f"#define {cycle_counter.MACRO}" in c_model     # compiled alone, it still only declares the header's
    assert re.search(rf"void {cycle_counter.MODULE}\(ap_uint<32> after, ap_uint<64> &now\)", c_model)
    # the C declaration the top calls (under the macro build.tcl defines)
    header = (hls_project.firmware_dir / "cycle_counter.h").read_text()
    decl = re.search(rf"#ifdef {cycle_counter.MACRO}\n(void {cycle_counter.MODULE}\((.*?)\);)", header)
    assert decl, "cycle_counter.h declares no blackbox under the macro"
    c_args = {}
    for arg in decl.group(2).split(","):
        m = re.fullmatch(r"\s*ap_uint<(\d+)>\s*(&?)\s*(\w+)\s*", arg)
        c_args[m.group(3)] = ("out" if m.group(2) else "in", int(m.group(1)))
    assert {p["c_name"]: p["c_port_direction"] for p in j["c_parameters"]} == {n: d for n, (d, _) in c_args.items()}
    # every RTL port the JSON names is a port of the module, with the C argument's width, and none is left over
    ports = _verilog_ports(root / rtl, cycle_counter.MODULE, tmp_path)
    named = {}
    for p in j["c_parameters"]:
        direction, bits = c_args[p["c_name"]]
        for role, port in p["rtl_ports"].items():
            want = {"data_read_in": ("input", bits), "data_write_out": ("output", bits),
                    "data_write_valid": ("output", 1)}[role]
            named[port] = want
    for role, port in j["rtl_common_signal"].items():
        named[port] = ("output" if role.endswith(("_idle", "_ready", "_done")) else "input", 1)
    assert ports == named
    assert j["rtl_performance"] == {"latency": str(cycle_counter.LATENCY), "II": "1"}
    # the resources it declares are what yosys synthesizes from the same Verilog
    stat = tmp_path / "stat.txt"
    r = subprocess.run(["yosys", "-q", "-p", f"read_verilog {root / rtl}; synth_xilinx -family xc7 -top "
                        f"{cycle_counter.MODULE}; tee -q -o {stat} stat"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cells = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+(\d+)$", stat.read_text(), re.M)}
    ffs = sum(n for c, n in cells.items() if c.startswith("FD"))
    luts = sum(n for c, n in cells.items() if re.fullmatch(r"LUT\d|INV", c))
    assert (int(j["rtl_resource_usage"]["FF"]), int(j["rtl_resource_usage"]["LUT"])) == (ffs, luts), cells


@pytest.mark.csim
def test_cycle_counter_vitis_csim_configuration_links_and_says_not_available(hls_project, tmp_path):
    """The sources as Vitis C-simulation compiles them (build.tcl's cflags with the macro, the C model from
    the JSON's c_files) link, run the project's vectors bit-exact and report the real cycles as not
    available; without the C model the blackbox is only declared (the link fails): no C++ counter hides
    behind the Verilog. The g++ C-simulation (no macro) needs no extra source."""
    from engine_io.gxx_build import ap_types_dir

    root = hls_project.path
    j = json.loads((root / cycle_counter.JSON).read_text())
    cflags = ["-O1", "-std=c++14", f"-D{cycle_counter.MACRO}", f"-I{hls_project.firmware_dir}", f"-I{ap_types_dir()}"]
    srcs = [str(hls_project.firmware_dir / "top.cpp"), str(hls_project.tb_dir / "tb.cpp")]
    exe = tmp_path / "tb_vitis_csim"
    r = subprocess.run(["g++", *cflags, *srcs, str(root / j["c_files"][0]["c_file"]), "-o", str(exe)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = hls_project.data_dir
    r = subprocess.run([str(exe), str(data / "program.bin"), str(data / "inputs.bin"), str(tmp_path / "out.bin"),
                        str(data / "expected.bin")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "tb: PASS" in r.stdout, r.stdout
    assert "tb: real cycles: not available (C-simulation)" in r.stdout
    r = subprocess.run(["g++", *cflags, "-c", srcs[0], "-o", str(tmp_path / "top.o")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    nm = subprocess.run(["nm", "-C", "-u", str(tmp_path / "top.o")], capture_output=True, text=True).stdout
    assert f"{cycle_counter.MODULE}(ap_uint<32>, ap_uint<64>&)" in nm      # undefined: the blackbox


# ---------------------------------------------------------------------------
# Vivado: vivado.tcl
# ---------------------------------------------------------------------------
def _engine_interfaces(project) -> set[str]:
    """The engine IP's interface names, from the HLS pragmas of its top function (Vitis naming:
    s_axi_<bundle>, m_axi_<bundle>, the axis argument names)."""
    top = (project.firmware_dir / "top.cpp").read_text()
    lite = set(re.findall(r"#pragma HLS INTERFACE s_axilite port=\w+ .*?bundle=(\w+)", top))
    mm = set(re.findall(r"#pragma HLS INTERFACE m_axi port=\w+ .*?bundle=(\w+)", top))
    axis = set(re.findall(r"#pragma HLS INTERFACE axis port=(\w+)", top))
    assert lite and mm and axis
    return {f"s_axi_{b}" for b in lite} | {f"m_axi_{b}" for b in mm} | axis


@dataclass
class VivadoCase:
    board: str
    project: object
    ip_repo: Path
    out_dir: Path
    tcl: Path


def _vivado_case(tmp: Path, board_name: str, *, export: bool = True) -> VivadoCase:
    """An HLS project for ``board_name`` run through build.tcl (export=1) in the test double, so
    the IP repository exists as Vitis leaves it, and the Vivado script rendered for it."""
    board = get_board(board_name)
    proj = write_project(EngineConfig(), tmp / "hls", part=board.part, clock_ns=1000.0 / board.clock_mhz)
    vendor.check_hls_project(proj, board)
    if export:
        r = run_tcl(tmp / "vitis", proj.build_tcl, "csim=0", "export=1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.named("set_part") == [[board.part]]
        assert float(opt(r.named("create_clock")[0], "-period")) == pytest.approx(1000.0 / board.clock_mhz)
    ip_repo = vendor.ip_repo_dir(proj.path)
    tcl = vendor.write_vivado_tcl(tmp / "vivado" / "vivado.tcl", board_name, config_hash=HASH, ip_repo=ip_repo,
                                  out_dir=tmp / "out dir")
    return VivadoCase(board_name, proj, ip_repo, tmp / "out dir", tcl)


@pytest.mark.parametrize("board_name", ["pynq-z2", "zcu104"])
def test_vivado_block_design(tmp_path, board_name):
    board = get_board(board_name)
    ps = vendor.PS_IPS[board.ps_ip]
    case = _vivado_case(tmp_path, board_name)
    r = run_tcl(tmp_path / "vivado", case.tcl)
    assert r.returncode == 0, r.stdout + r.stderr

    # project for the board's part and board files, the exported engine IP in the catalog
    (proj,) = r.named("create_project")
    assert proj[:2] == ["vqhls_bd", str(case.tcl.parent / "vqhls_bd")] and opt(proj, "-part") == board.part
    assert "-force" in proj
    project_props = r.props()["vqhls_bd"]
    assert project_props["board_part"] == board.board_part
    assert r.facts_of("ip_repo") == [[str(case.ip_repo.resolve())]]
    assert r.commands().index("update_ip_catalog") < r.commands().index("create_bd_design")
    cells = r.cells()
    engine_vlnv = cells[vendor.ENGINE_CELL]
    assert engine_vlnv == vendor.engine_vlnv(HASH)     # the IP exported for this engine config, by its hash
    kinds = {name: "vqhls_engine" if vlnv == engine_vlnv else vlnv.split(":")[2] for name, vlnv in cells.items()}
    assert sorted(kinds.values()) == sorted(["vqhls_engine", ps.vlnv.split(":")[2], "axi_dma", "axi_interconnect",
                                             "smartconnect", "proc_sys_reset"])
    ps_cell = ps.cell
    dma = vendor.DMA_CELL
    eng = vendor.ENGINE_CELL
    props = r.props()

    # PS: board preset, then HP0 on, the control master on (the others off), FCLK0 at the board clock
    (auto,) = r.named("apply_bd_automation")
    assert opt(auto, "-rule") == ps.rule and auto[-1] == f"/{ps_cell}"
    assert 'apply_board_preset "1"' in opt(auto, "-config")
    if ps.kind == "ps7":
        assert 'make_external "FIXED_IO, DDR"' in opt(auto, "-config")
        assert props[f"/{ps_cell}"]["CONFIG.PCW_USE_S_AXI_HP0"] == "1"
        assert props[f"/{ps_cell}"]["CONFIG.PCW_USE_M_AXI_GP0"] == "1"
        assert props[f"/{ps_cell}"]["CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ"] == "100"
        assert props[f"/{ps_cell}"]["CONFIG.PCW_EN_CLK0_PORT"] == "1"
    else:
        assert props[f"/{ps_cell}"]["CONFIG.PSU__USE__S_AXI_GP2"] == "1"           # S_AXI_HP0_FPD (saxihp0)
        assert props[f"/{ps_cell}"]["CONFIG.PSU__USE__M_AXI_GP0"] == "1"           # M_AXI_HPM0_FPD
        assert props[f"/{ps_cell}"]["CONFIG.PSU__USE__M_AXI_GP1"] == "0"
        assert props[f"/{ps_cell}"]["CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"] == "200"
        assert props[f"/{ps_cell}"]["CONFIG.PSU__FPGA_PL0_ENABLE"] == "1"
    # the PS settings come after the preset (which would overwrite them)
    assert r.commands().index("apply_bd_automation") < [i for i, c in enumerate(r.calls)
                                                         if c[0] == "set_property" and c[-1] == f"/{ps_cell}"][0]

    # AXI DMA: simple mode, 26-bit length, 8-bit streams
    d = props[f"/{dma}"]
    assert d["CONFIG.c_include_sg"] == "0"
    assert d["CONFIG.c_sg_length_width"] == "26"
    assert d["CONFIG.c_m_axis_mm2s_tdata_width"] == "8"
    assert d["CONFIG.c_s_axis_s2mm_tdata_width"] == "8"
    assert d["CONFIG.c_sg_include_stscntrl_strm"] == "0"
    assert props["/axi_smc_mem"] == {"CONFIG.NUM_SI": "3", "CONFIG.NUM_MI": "1"}
    assert props["/axi_periph"]["CONFIG.NUM_MI"] == "2"

    # interface nets: streams, control on the PS master, memory on the PS slave
    intf_nets = {tuple(sorted(a)) for a in r.named("connect_bd_intf_net")}
    assert len(intf_nets) == len(r.named("connect_bd_intf_net")) == 9
    want = [(f"/{dma}/M_AXIS_MM2S", f"/{eng}/in_stream"), (f"/{eng}/out_stream", f"/{dma}/S_AXIS_S2MM"),
            (f"/{ps_cell}/{board.gp_port}", "/axi_periph/S00_AXI"),
            ("/axi_periph/M00_AXI", f"/{eng}/s_axi_control"), ("/axi_periph/M01_AXI", f"/{dma}/S_AXI_LITE"),
            (f"/{eng}/m_axi_gmem", "/axi_smc_mem/S00_AXI"), (f"/{dma}/M_AXI_MM2S", "/axi_smc_mem/S01_AXI"),
            (f"/{dma}/M_AXI_S2MM", "/axi_smc_mem/S02_AXI"), ("/axi_smc_mem/M00_AXI", f"/{ps_cell}/{board.hp_port}")]
    assert intf_nets == {tuple(sorted(p)) for p in want}
    # every engine interface its HLS source declares is connected, and nothing else of it
    eng_intf = {p.split("/")[2] for net in intf_nets for p in net if p.startswith(f"/{eng}/")}
    assert eng_intf == _engine_interfaces(case.project) == {"s_axi_control", "m_axi_gmem", "in_stream", "out_stream"}

    # pins exist on their IPs; every clock and reset input is driven
    nets = [a for a in r.named("connect_bd_net")]
    pins_used = {p for net in nets for p in net} | {p for net in intf_nets for p in net}
    ps_kind = ps.vlnv.split(":")[2]
    for pin in pins_used:
        _, cell, name = pin.split("/")
        kind = kinds[cell]
        if kind == "vqhls_engine":
            known = _engine_interfaces(case.project) | {"ap_clk", "ap_rst_n", "interrupt"}
        elif kind == ps_kind:
            known = PS_PINS[kind]["intf"] | PS_PINS[kind]["other"]
        else:
            t = XILINX_PINS[kind]
            known = t["intf"] | t["clocks"] | t["resets"] | t["other"]
        assert name in known, f"{pin}: no pin {name} on {kind}"
    (clk_net,) = [n for n in nets if n[0] == f"/{ps_cell}/{ps.fclk}"]
    want_clocks = {f"/{eng}/ap_clk", f"/{ps_cell}/{ps.fclk}",
                   f"/{ps_cell}/{dict((p.name, p.clock) for p in ps.masters)[board.gp_port]}",
                   f"/{ps_cell}/{dict((p.name, p.clock) for p in ps.slaves)[board.hp_port]}"}
    for cell, kind in kinds.items():
        if kind in XILINX_PINS:
            want_clocks |= {f"/{cell}/{c}" for c in XILINX_PINS[kind]["clocks"]}
    assert set(clk_net) == want_clocks
    resets = {p for n in nets if n[0].startswith("/rst_fclk0/") for p in n[1:]}
    want_resets = {f"/{eng}/ap_rst_n"} | {f"/{cell}/{x}" for cell, kind in kinds.items()
                                          if kind in XILINX_PINS and kind != "proc_sys_reset"
                                          for x in XILINX_PINS[kind]["resets"]}
    assert resets == want_resets
    assert [f"/{ps_cell}/{ps.fclk_resetn}", "/rst_fclk0/ext_reset_in"] in nets

    # addresses: engine control + DMA lite in the PS master's space; the HP port's DDR in the 3 masters'
    assigned = {(opt(a, "-target_address_space"), a[-1]) for a in r.named("assign_bd_address")}
    hp = dict((p.name, p) for p in ps.slaves)[board.hp_port]
    ddr = f"/{ps_cell}/{hp.addr_intf}/{hp.ddr_segment}"
    assert assigned == {(f"/{ps_cell}/Data", f"/{eng}/s_axi_control/Reg"),
                        (f"/{ps_cell}/Data", f"/{dma}/S_AXI_LITE/Reg"),
                        (f"/{eng}/Data_m_axi_gmem", ddr), (f"/{dma}/Data_MM2S", ddr), (f"/{dma}/Data_S2MM", ddr)}
    excluded = {(opt(a, "-target_address_space"), a[-1]) for a in r.named("exclude_bd_addr_seg")}
    assert all(seg != ddr and seg.startswith(f"/{ps_cell}/{hp.addr_intf}/") for _, seg in excluded)
    assert len(excluded) == (0 if ps.kind == "ps7" else 3 * 3)       # ZynqMP: DDR_HIGH, LPS_OCM, QSPI
    order = r.commands()
    assert order.index("validate_bd_design") > max(i for i, c in enumerate(order) if c == "assign_bd_address")

    # wrapper, bitstream, reports, and .bit + .hwh side by side
    (wrapper,) = r.named("make_wrapper")
    assert opt(wrapper, "-files").endswith("/vqhls_bd.bd") and "-top" in wrapper
    assert props["sources_1"]["top"] == "vqhls_bd_wrapper"
    (add,) = r.named("add_files")
    assert add[-1].endswith("vqhls_bd_wrapper.v")
    (launch,) = r.named("launch_runs")
    assert launch[0] == "impl_1" and opt(launch, "-to_step") == "write_bitstream" and opt(launch, "-jobs") == "4"
    assert r.named("wait_on_run") == [["impl_1"]]
    assert order.index("launch_runs") < order.index("wait_on_run") < order.index("open_run")
    out = case.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["timing_summary.rpt", "utilization.rpt", "utilization_hier.rpt",
                                                     "vqhls.bit", "vqhls.hwh"]
    assert (out / "vqhls.bit").read_text() == "fake bitstream of vqhls_bd_wrapper\n"
    assert (out / "vqhls.hwh").read_text() == "fake hardware handoff of vqhls_bd\n"
    assert {opt(a, "-file") for a in r.named("report_utilization")} == {str(out / "utilization.rpt"),
                                                                       str(out / "utilization_hier.rpt")}
    assert [opt(a, "-file") for a in r.named("report_timing_summary")] == [str(out / "timing_summary.rpt")]
    assert f"vqhls: wrote {out / 'vqhls.bit'}" in r.stdout


def test_vivado_reference_covered(tmp_path):
    """What hls4ml's PYNQ-Z2 block design does (the reference, read from the installed hls4ml) this one
    does too: its Vivado commands (less GUI grouping and run resets) and its DMA mode settings."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("hls4ml not installed")
    ref = (Path(spec.submodule_search_locations[0]) / "templates" / "vivado_accelerator" / "pynq-z2" / "tcl_scripts"
           / "axi_stream_design.tcl")
    if not ref.is_file():
        pytest.skip(f"no hls4ml reference at {ref}")
    text = ref.read_text()
    ref_cmds = {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}
    ref_cmds -= {"set", "source", "startgroup", "endgroup", "group_bd_cells", "reset_run"}
    ref_dma = dict(re.findall(r"CONFIG\.(c_include_sg|c_sg_length_width|c_sg_include_stscntrl_strm) \{(\w+)\}", text))
    assert set(ref_dma) == {"c_include_sg", "c_sg_length_width", "c_sg_include_stscntrl_strm"}

    case = _vivado_case(tmp_path, "pynq-z2")
    r = run_tcl(tmp_path / "run", case.tcl)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ref_cmds <= set(r.commands()), ref_cmds - set(r.commands())
    dma = r.props()[f"/{vendor.DMA_CELL}"]
    for key, value in ref_dma.items():
        assert dma[f"CONFIG.{key}"] == value, key
    ours = case.tcl.read_text()
    # and what it leaves out: the engine's own DDR master, explicit addresses, .bit + .hwh for PYNQ
    for extra in ("m_axi_gmem", "assign_bd_address", "hw_handoff", "validate_bd_design", "report_timing_summary"):
        assert extra in ours and extra not in text


def test_vivado_tclargs_and_board_files(tmp_path):
    case = _vivado_case(tmp_path, "zcu104")
    # jobs and an extra board repository from -tclargs
    r = run_tcl(tmp_path / "a", case.tcl, "jobs=12", f"board_repo={tmp_path / 'boards'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert opt(r.named("launch_runs")[0], "-jobs") == "12"
    assert r.named("set_param") == [["board.repoPaths", str(tmp_path / "boards")]]
    assert r.commands().index("set_param") < r.commands().index("create_project")
    # another board-file version of the same board is taken
    r = run_tcl(tmp_path / "b", case.tcl, board_parts="xilinx.com:zcu104:part0:1.0 xilinx.com:zcu102:part0:3.4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.props()["vqhls_bd"]["board_part"] == "xilinx.com:zcu104:part0:1.0"
    # no board files at all: stop before the block design, say how to get them
    r = run_tcl(tmp_path / "c", case.tcl, board_parts="")
    assert r.returncode == 1
    assert "no board files for xilinx.com:zcu104:part0:1.1" in r.stderr and "board_repo=DIR" in r.stderr
    assert "create_bd_design" not in r.commands()
    # an unknown argument is reported
    r = run_tcl(tmp_path / "d", case.tcl, "job=3")
    assert r.returncode == 0 and "WARNING: ignoring argument 'job=3'" in r.stdout


def test_vivado_needs_exported_ip(tmp_path):
    case = _vivado_case(tmp_path, "pynq-z2", export=False)
    r = run_tcl(tmp_path / "run", case.tcl)
    assert r.returncode == 1 and "no engine IP repository at" in r.stderr and "export=1" in r.stderr
    assert "create_project" not in r.commands()
    # a repository without the engine IP
    case.ip_repo.mkdir(parents=True)
    r = run_tcl(tmp_path / "run2", case.tcl)
    assert r.returncode == 1 and f"has no IP {vendor.engine_vlnv(HASH)}" in r.stderr
    assert "create_bd_design" not in r.commands()
    # a repository holding the engine IP of another engine config: named as such, not taken
    other = "0badc0de"
    (case.ip_repo / "component.xml").write_text(f'<fake-component vlnv="{vendor.engine_vlnv(other)}"/>\n')
    r = run_tcl(tmp_path / "run3", case.tcl)
    assert r.returncode == 1 and f"has no IP {vendor.engine_vlnv(HASH)} but {vendor.engine_vlnv(other)}" in r.stderr
    assert "exported for another engine config" in r.stderr and "create_bd_design" not in r.commands()


def test_vivado_failed_implementation_and_old_hwh_location(tmp_path):
    case = _vivado_case(tmp_path, "pynq-z2")
    r = run_tcl(tmp_path / "a", case.tcl, progress="42%")
    assert r.returncode == 1 and "implementation did not finish" in r.stderr
    assert not case.out_dir.exists() or not any(case.out_dir.iterdir())
    # Vivado before 2020.2 writes the hardware handoff under .srcs; negative slack is reported loudly
    r = run_tcl(tmp_path / "b", case.tcl, hwh_in="srcs", wns="-0.250")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (case.out_dir / "vqhls.hwh").is_file() and (case.out_dir / "vqhls.bit").is_file()
    assert "CRITICAL WARNING: [vqhls] timing not met at 100 MHz: WNS -0.250 ns" in r.stdout


def test_vivado_board_without_preset(tmp_path):
    board = replace(get_board("pynq-z2"), name="bare-z7", board_part="")
    tcl = tmp_path / "v.tcl"
    tcl.write_text(vendor.render_vivado_tcl(board, config_hash=HASH, ip_repo=tmp_path / "ip", out_dir=tmp_path / "out",
                                            script_dir=tmp_path))
    (tmp_path / "ip").mkdir()
    (tmp_path / "ip" / "component.xml").write_text(f'<fake-component vlnv="{vendor.engine_vlnv(HASH)}"/>\n')
    r = run_tcl(tmp_path / "run", tcl, board_parts="")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "get_board_parts" not in r.commands() and "board_part" not in r.props()["vqhls_bd"]
    assert 'apply_board_preset "0"' in opt(r.named("apply_bd_automation")[0], "-config")


def test_render_refuses_unknown_ps_ports():
    base = get_board("pynq-z2")
    for bad in (dict(hp_port="S_AXI_HP9"), dict(gp_port="S_AXI_HP0"), dict(ps_ip="xilinx.com:ip:versal_cips")):
        with pytest.raises(vendor.BoardDesignError):
            vendor.render_vivado_tcl(replace(base, **bad), config_hash=HASH, ip_repo="/ip", out_dir="/out")
    with pytest.raises(ValueError):
        vendor.render_vivado_tcl(base, config_hash=HASH, ip_repo="/ip", out_dir="/out", project_name="my project")
    with pytest.raises(ValueError, match="not 8 hex digits"):
        vendor.render_vivado_tcl(base, config_hash="xyz", ip_repo="/ip", out_dir="/out")
    # another HP port: its enable, clock and DDR segment follow
    tcl = vendor.render_vivado_tcl(replace(base, hp_port="S_AXI_HP2"), config_hash=HASH, ip_repo="/ip", out_dir="/out")
    assert "CONFIG.PCW_USE_S_AXI_HP2 {1}" in tcl and "$ps/S_AXI_HP2_ACLK" in tcl
    assert "$ps/S_AXI_HP2/HP2_DDR_LOWOCM" in tcl and "S_AXI_HP0" not in tcl


def test_check_hls_project(tmp_path):
    proj = write_project(EngineConfig(), tmp_path / "p")
    vendor.check_hls_project(proj, "pynq-z2")
    with pytest.raises(ValueError, match="part xc7z020clg400-1.*clock 10.0 ns"):
        vendor.check_hls_project(proj, "zcu104")


@pytest.mark.parametrize("value", ["plain_word-1.0", "/a path/with spaces", "$x [exit 3] {brace} \"q\" \\ ;#",
                                   "", "tab\there\nnewline\x01", "ünïcödé Ω", "-force", "}{", "a\\"])
def test_tcl_quote_round_trip(tmp_path, value):
    script = tmp_path / "q.tcl"
    quoted = vendor.tcl_quote(value)
    assert quoted.isascii()
    script.write_text(f"set v {quoted}\nfconfigure stdout -encoding utf-8\nputs -nonewline $v\n")
    r = subprocess.run([TCLSH, str(script)], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == value


def test_rendered_paths_are_quoted(tmp_path):
    """Paths with Tcl metacharacters reach the script as values, not as code."""
    odd = tmp_path / "we$ird [dir]"
    case_ip = odd / "ip"
    case_ip.mkdir(parents=True)
    (case_ip / "component.xml").write_text(f'<fake-component vlnv="{vendor.engine_vlnv(HASH)}"/>\n')
    tcl = vendor.write_vivado_tcl(odd / "v.tcl", "pynq-z2", config_hash=HASH, ip_repo=case_ip, out_dir=odd / "out {1}")
    r = run_tcl(tmp_path / "run", tcl)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.facts_of("ip_repo") == [[str(case_ip)]]
    assert (odd / "out {1}" / "vqhls.bit").is_file()


# ---------------------------------------------------------------------------
# running vendor tools
# ---------------------------------------------------------------------------
def test_run_or_skip_without_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert vendor.find_tool("vitis_hls") is None and vendor.find_tool("vivado") is None
    proj_dir = tmp_path / "my proj"
    cmd = vendor.vitis_command(proj_dir, csim=False, export=True)
    res = vendor.run_or_skip("vitis_hls", cmd, proj_dir, tmp_path / "vitis.log")
    assert not res.ran and res.returncode is None and res.log is None and not res.ok
    first, second = res.message.splitlines()
    assert first == "skipped: vitis_hls not found"
    line = (f"cd '{proj_dir}' && vitis_hls -f '{proj_dir.resolve() / 'build.tcl'}' "
            "-tclargs csim=0 synth=1 cosim=0 export=1 impl=0")
    assert res.command == line and second.endswith(line)
    assert not (tmp_path / "vitis.log").exists()
    res = vendor.run_or_skip("vivado", vendor.vivado_command(tmp_path / "v.tcl", jobs=8), tmp_path, tmp_path / "l")
    assert res.message.splitlines()[0] == "skipped: vivado not found"
    assert res.command.endswith(f"vivado -mode batch -nojournal -notrace -source {tmp_path / 'v.tcl'} -tclargs jobs=8")


FAKE_VITIS_HLS_SH = """#!/bin/sh
# test double of vitis_hls (tests/flow/hls/test_tcl.py): echoes its arguments and cwd, then some log lines
echo "fake vitis_hls $*"
echo "cwd $(pwd)"
i=0
while [ $i -lt 50 ]; do echo "line $i"; i=$((i+1)); done
echo "to stderr" >&2
exit ${FAKE_VITIS_RC:-0}
"""


def test_run_or_skip_runs_tool(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vitis_hls"
    fake.write_text(FAKE_VITIS_HLS_SH)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert vendor.find_tool("vitis_hls") == str(fake)
    work = tmp_path / "work"
    work.mkdir()
    cmd = vendor.vitis_command(work, impl=True)
    res = vendor.run_or_skip("vitis_hls", cmd, work, tmp_path / "logs" / "vitis.log", progress=False)
    assert res.ran and res.returncode == 0 and res.ok
    assert res.message == f"vitis_hls finished (exit 0): log {tmp_path / 'logs' / 'vitis.log'}"
    log = res.log.read_text()
    assert log.startswith(f"# {res.command}\n")
    assert f"fake vitis_hls -f {work / 'build.tcl'} -tclargs csim=1 synth=1 cosim=0 export=1 impl=1" in log
    assert f"cwd {work}" in log and "line 49" in log and "to stderr" in log
    # a failing run: exit code and the log's tail in the message
    monkeypatch.setenv("FAKE_VITIS_RC", "3")
    res = vendor.run_or_skip("vitis_hls", cmd, work, tmp_path / "vitis2.log", progress=False)
    assert res.ran and res.returncode == 3 and not res.ok
    head, *tail = res.message.splitlines()
    assert head == f"vitis_hls failed (exit 3): log {tmp_path / 'vitis2.log'}"
    assert tail[-1] == "to stderr" and len(tail) == 20


def test_vivado_command():
    cmd = vendor.vivado_command("x/vivado.tcl")
    assert cmd == ["vivado", "-mode", "batch", "-nojournal", "-notrace", "-source", str(Path("x/vivado.tcl").resolve())]
    cmd = vendor.vivado_command("/a/v.tcl", jobs=2, board_repo="/boards")
    assert cmd[-3:] == ["-tclargs", "jobs=2", "board_repo=/boards"]


# ---------------------------------------------------------------------------
# the relocatable vendor handoff: hls/ + vivado/ + vendor/run_vendor.sh, moved, then run under the doubles
# ---------------------------------------------------------------------------
FAKE_TOOL_SH = r"""#!/bin/sh
# test double of {tool} (tests/flow/hls/test_tcl.py): runs the Tcl script it is given (-f / -source / --tcl)
# in tclsh after the recording prelude, with the words after -tclargs as the script's argv
script=
while [ $# -gt 0 ]; do
    case $1 in
        -f|-source|--tcl) script=$2; shift 2 ;;
        -tclargs) shift; break ;;
        *) shift ;;
    esac
done
echo "{tool} $(pwd) $script" >> "$FAKE_LOG_DIR/scripts.txt"
FAKE_LOG="$FAKE_LOG_DIR/{tool}.jsonl" FAKE_SCRIPT="$script" exec tclsh "$FAKE_DRIVER" "$@"
"""


def _fake_tools(tmp: Path, tools: tuple[str, ...], extra_tcl: str = "") -> dict[str, str]:
    """A bin folder with shell doubles of ``tools`` (each runs its script in tclsh under the prelude, plus
    ``extra_tcl``: more doubles, e.g. test_rtl_ip's ipx:: commands) and the environment that puts it first
    on PATH."""
    bindir = tmp / "bin"
    bindir.mkdir(parents=True)
    for tool in tools:
        f = bindir / tool
        f.write_text(FAKE_TOOL_SH.replace("{tool}", tool))
        f.chmod(0o755)
    prelude = tmp / "fake_vendor_tools.tcl"
    prelude.write_text(FAKE_VENDOR_TOOLS_TCL + extra_tcl)
    driver = tmp / "fake_driver.tcl"
    driver.write_text("source $::env(FAKE_PRELUDE)\nsource $::env(FAKE_SCRIPT)\n")
    logs = tmp / "logs"
    logs.mkdir()
    return dict(os.environ, PATH=f"{bindir}{os.pathsep}{Path(TCLSH).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
                FAKE_PRELUDE=str(prelude), FAKE_DRIVER=str(driver), FAKE_LOG_DIR=str(logs),
                FAKE_BOARD_PARTS="tul.com.tw:pynq-z2:part0:1.0", FAKE_HWH_IN="gen", FAKE_PROGRESS="100%",
                FAKE_WNS="0.1")


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("hls_tool", ["vitis_hls", "vitis-run"])
def test_vendor_kit_runs_after_a_move(hls_project, tmp_path, hls_tool):
    """A build's hls/, vivado/ and vendor/ folders, moved to another place, run there with the one documented
    command: every path the (doubled) tools receive lies in the new place, none in the old one, and the run
    script names the Tcl files the flow wrote. vitis-run (Vitis 2024.2+) gets build.tcl's options from
    VQHLS_HLS_ARGS instead of -tclargs."""
    old = tmp_path / "build_here"
    shutil.copytree(hls_project.path, old / "hls")
    shutil.rmtree(old / "hls" / "vqhls_prj", ignore_errors=True)       # an earlier test's export
    kit = vendor.write_vendor_kit(old, "pynq-z2", old / "hls", HASH)
    assert kit.vivado_tcl == old / "vivado" / "vivado.tcl" and kit.run_script == old / "vendor" / "run_vendor.sh"
    written = {p.relative_to(old).as_posix(): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    # nothing written for the vendor machine holds this machine's path
    for rel, data in written.items():
        assert str(old).encode() not in data and str(old.resolve()).encode() not in data, rel

    new = tmp_path / "elsewhere" / "copied_build"
    new.mkdir(parents=True)
    for sub in ("hls", "vivado", "vendor"):
        shutil.move(str(old / sub), str(new / sub))
    assert not any(old.iterdir())
    boards = tmp_path / "board_files"
    boards.mkdir()
    env = _fake_tools(tmp_path / "tools", (hls_tool, "vivado"))
    r = subprocess.run(["sh", str(new / "vendor" / "run_vendor.sh"), f"board_repo={boards}", "csim=1",
                        f"hls={hls_tool}"], cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    logs = Path(env["FAKE_LOG_DIR"])

    # the run script ran the flow's own build.tcl and vivado.tcl, in their new folders
    ran = [line.split(" ", 1)[1].rsplit(" ", 1) for line in (logs / "scripts.txt").read_text().splitlines()]
    assert [Path(cwd) / script for cwd, script in ran] == [new / "hls" / "build.tcl", new / "vivado" / "vivado.tcl"]
    assert (new / "hls" / "build.tcl").read_bytes() == written["hls/build.tcl"]
    assert (new / "vivado" / "vivado.tcl").read_bytes() == written["vivado/vivado.tcl"]
    hls_calls, viv_calls = _calls(logs / f"{hls_tool}.jsonl"), _calls(logs / "vivado.jsonl")
    cmds = [c[0] for c in hls_calls]
    assert {"csim_design", "csynth_design", "export_design"} <= set(cmds) and "cosim_design" not in cmds

    # every path a tool received: inside the new place (or the board files), never the old one
    words = [w for c in hls_calls + viv_calls for a in c[1:] for w in a.split()]   # -cflags, -argv: several
    assert not [w for w in words if str(old) in w]
    # file system paths (block-design objects also start with "/": /processing_system7_0/...)
    absolute = [w for w in words if w.startswith("/") and len(Path(w).parts) > 1 and Path("/", Path(w).parts[1]).exists()]
    assert len(absolute) > 10, "the doubles recorded no paths"
    outside = [w for w in absolute if not (Path(w).is_relative_to(new) or Path(w).is_relative_to(boards))]
    assert not outside
    relative = [c[1] if not c[1].startswith("-") else c[2] for c in hls_calls if c[0] == "add_files"]
    assert relative and all((new / "hls" / rel).exists() for rel in relative)
    facts = {c[0]: c[1:] for c in viv_calls if c[0].startswith("=")}
    assert facts["=ip_repo"] == [str(vendor.ip_repo_dir(new / "hls"))]
    assert ["board.repoPaths", str(boards)] in [c[1:] for c in viv_calls if c[0] == "set_param"]
    (create,) = [c[1:] for c in viv_calls if c[0] == "create_project"]
    assert create[1] == str(new / "vivado" / "vqhls_bd")
    assert [c for c in viv_calls if c[0] == "=cell" and c[1] == vendor.ENGINE_CELL][0][2] == vendor.engine_vlnv(HASH)
    # the bitstream and its handoff where the run script says, in the new place only
    assert (new / "vivado" / "out" / "vqhls.bit").is_file() and (new / "vivado" / "out" / "vqhls.hwh").is_file()
    assert not list(old.rglob("*"))
    assert f"add-bitstream <the build's deploy folder> {new / 'vivado' / 'out'}" in r.stdout


def test_vendor_kit_refuses_bad_arguments(tmp_path):
    proj = write_project(EngineConfig(), tmp_path / "b" / "hls")
    kit = vendor.write_vendor_kit(tmp_path / "b", "pynq-z2", proj.path, HASH)
    env = _fake_tools(tmp_path / "tools", ("vitis_hls", "vivado"))
    for args, want in ((["jobs=x"], "error: jobs=x is not a number"), (["boardrepo=/x"], "error: unknown argument"),
                       ([f"board_repo={tmp_path / 'none'}"], "is not a folder")):
        r = subprocess.run(["sh", str(kit.run_script), *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and want in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (Path(env["FAKE_LOG_DIR"]) / "scripts.txt").exists()       # nothing ran
    r = subprocess.run(["sh", str(kit.run_script), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "board_repo=DIR" in r.stdout and "XilinxBoardStore" in r.stdout
    assert "vitis-run" in r.stdout and "2024.2" in r.stdout and not (Path(env["FAKE_LOG_DIR"]) / "scripts.txt").exists()
    # without board_repo on the PYNQ-Z2: a note where the TUL board files come from, then the run
    r = subprocess.run(["sh", str(kit.run_script)], env=env, capture_output=True, text=True, timeout=60)
    assert "note: tul.com.tw:pynq-z2:part0:1.0 needs board files" in r.stderr
    # a folder path with a space: refused before Vitis HLS would split its -cflags there
    spaced = tmp_path / "with space"
    shutil.copytree(tmp_path / "b", spaced)
    (Path(env["FAKE_LOG_DIR"]) / "scripts.txt").unlink()
    r = subprocess.run(["sh", str(spaced / "vendor" / "run_vendor.sh")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "has a space in its path" in r.stderr
    assert not (Path(env["FAKE_LOG_DIR"]) / "scripts.txt").exists()
    # the documented command names board_repo=
    assert vendor.kit_command(kit.out).endswith("vendor/run_vendor.sh board_repo=DIR")
