"""Board descriptions: the resources a build must fit and how to reach the part.

``flow.boards.resource_model`` models what an EngineConfig uses of them and
``flow.boards.sizing`` picks the EngineConfig for a board.

Numbers: xc7z020 (PYNQ-Z2) from its Vivado utilization reports (53,200 LUT,
17,400 LUT as memory, 106,400 FF, 220 DSP48E1, 140 RAMB36). xczu7ev (ZCU104)
from a Vivado utilization report of that part (230,400 LUT, 101,760 LUTRAM,
460,800 FF, 1,728 DSP48E2, 312 RAMB36); its 96 UltraRAM blocks are not used by
the model. Clocks are the usual HLS targets; DDR bandwidth is the PS DDR
interface peak (PYNQ-Z2 through one HP port; ZCU104 64-bit DDR4-2400 = 19.2 GB/s).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    lut: int
    ff: int
    dsp: int
    bram36: int
    clock_mhz: float
    ddr_gbps: float
    family: str = "7series"     # "7series" (DSP48E1) or "ultrascale+" (DSP48E2: 27-bit A port)
    lutram: int = 0             # LUTs that can be distributed RAM (SLICEM); 0: not checked
    board_part: str = ""        # Vivado board part (board files) for the PS preset; "" builds without a preset
    ps_ip: str = ""             # Vivado PS IP, VLNV without version (flow.hls.vendor.PS_IPS); "" no block design
    gp_port: str = ""           # PS AXI master for the control ports (engine s_axi_control, DMA S_AXI_LITE)
    hp_port: str = ""           # PS AXI slave (DDR) for the engine's m_axi_gmem and the DMA's MM2S / S2MM


BOARDS = {
    "pynq-z2": Board("pynq-z2", "xc7z020clg400-1", lut=53_200, ff=106_400, dsp=220, bram36=140,
                     clock_mhz=100.0, ddr_gbps=1.6, family="7series", lutram=17_400,
                     board_part="tul.com.tw:pynq-z2:part0:1.0", ps_ip="xilinx.com:ip:processing_system7",
                     gp_port="M_AXI_GP0", hp_port="S_AXI_HP0"),
    "zcu104": Board("zcu104", "xczu7ev-ffvc1156-2-e", lut=230_400, ff=460_800, dsp=1_728, bram36=312,
                    clock_mhz=200.0, ddr_gbps=19.2, family="ultrascale+", lutram=101_760,
                    board_part="xilinx.com:zcu104:part0:1.1", ps_ip="xilinx.com:ip:zynq_ultra_ps_e",
                    gp_port="M_AXI_HPM0_FPD", hp_port="S_AXI_HP0_FPD"),
}


class UnknownBoardError(ValueError):
    """The board name is not described in flow.boards."""


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise UnknownBoardError(f"unknown board {name!r}: choose one of {', '.join(sorted(BOARDS))}")
    return BOARDS[name]
