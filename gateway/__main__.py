"""``python -m gateway`` runs the ``aleacc-gateway`` command."""

import sys

from .cli import main

sys.exit(main())
