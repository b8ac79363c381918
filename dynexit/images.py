"""Moved to :mod:`dynexit.data.images`. This alias (the same module object) remains only until
``app/views/upload.py`` and ``tests/app/test_logic.py`` import it from there."""

import sys

from dynexit.data import images

sys.modules[__name__] = images
