"""``python -m eventcore.cli``: the same as the ``eventcore`` command."""

import sys

from eventcore.cli.main import main

sys.exit(main())
