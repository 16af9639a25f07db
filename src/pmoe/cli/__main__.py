import sys

from pmoe.cli import main

sys.exit(main())
