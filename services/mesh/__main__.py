import sys

from services.mesh.launcher import main

sys.exit(main())
