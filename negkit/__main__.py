"""``python -m negkit``: the same as the ``negkit`` command (:mod:`negkit.cli`)."""
import sys

from negkit.cli import main

sys.exit(main())
