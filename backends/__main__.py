"""Command line: ``python -m backends compare`` and ``python -m backends list``.

See :mod:`backends.compare` for what is measured and how.
"""

from __future__ import annotations

import sys

from backends.compare import main

if __name__ == "__main__":
    sys.exit(main())
