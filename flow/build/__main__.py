"""``python -m flow.build``: see flow/build/__init__.py and ``--help``."""
import sys
import warnings

from flow.build import main

# a warning is one line for the user (e.g. a compressed layer the engine stores dense), not a source listing
warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"

sys.exit(main())
