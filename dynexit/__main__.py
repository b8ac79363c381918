import sys

from dynexit.cli import main

sys.exit(main())
