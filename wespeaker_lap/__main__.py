"""``python -m wespeaker_lap`` is the ``wespeaker-lap`` command."""
import sys

from wespeaker_lap.cli import main

sys.exit(main())
