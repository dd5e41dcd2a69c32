"""``python -m zmqcross``: the same as the ``zmqcross`` command."""

from .cli import main

raise SystemExit(main())
