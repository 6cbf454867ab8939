import sys

from soft_dist.cli import main

sys.exit(main())
