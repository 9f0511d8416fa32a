import os as _os

# torch's OpenMP threads spin while waiting by default; on a 2-core machine with
# any other load that turns a 2 s fine-tuning into minutes. Must be set before
# torch is imported to take effect.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
