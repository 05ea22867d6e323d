"""``python -m ray_app.cli``: the ``onramp`` command."""

import sys

from ray_app.cli import main

sys.exit(main())
