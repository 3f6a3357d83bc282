import sys

from mclcore.cli import main

sys.exit(main())
