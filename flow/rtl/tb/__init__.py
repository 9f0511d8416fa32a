"""cocotb testbenches of the RTL cores, run in the simulator's Python by flow.rtl.cosim.run_cocotb: each
reads its case from a file named in the environment and writes what it measured; the comparison with the
golden model is the caller's (flow.rtl.cosim_cases, flow.rtl.pq_cases, tests/rtl)."""
