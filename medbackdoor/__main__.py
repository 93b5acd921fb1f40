import sys

from medbackdoor.cli import main

sys.exit(main())
