"""``python -m flow.build``: see flow/build/__init__.py and ``--help``."""
import sys

from flow.build import main

sys.exit(main())
