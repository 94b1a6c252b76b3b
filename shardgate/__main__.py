import sys

from shardgate.cli import main

sys.exit(main())
