import sys

from spotkeeper_ops.cli import main

sys.exit(main())
