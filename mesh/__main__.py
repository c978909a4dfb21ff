import sys

from mesh.launcher import main

sys.exit(main())
