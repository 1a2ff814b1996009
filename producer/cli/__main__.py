"""``python -m ris.producer.cli``: the ``ris`` command line."""

import sys

from ris.producer.cli import main

sys.exit(main())
