import sys

from ..runtime.cli import launch_server

sys.exit(launch_server())
