"""``python -m sandbox [--host 127.0.0.1] [--port 8765]``: see :mod:`sandbox.cli`."""

from sandbox.cli import main

main()
