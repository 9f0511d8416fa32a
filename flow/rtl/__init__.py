"""RTL cores of the engine's compute units (Verilog from hls_templates/rtl/), their cocotb
co-simulation against the golden model, and their yosys area."""
