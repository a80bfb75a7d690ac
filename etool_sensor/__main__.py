"""`python -m etool_sensor` is `etool-sensor`."""

import sys

from .cli import main

sys.exit(main())
