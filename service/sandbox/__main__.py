import sys

from service.sandbox.cli import main

sys.exit(main())
