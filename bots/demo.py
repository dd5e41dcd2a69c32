"""`make demo`: the whole example fleet on this machine, without Discord (see zmqcross/demo).

The same as `zmqcross demo`, with this folder's bot.py in the clusters.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zmqcross.demo import main

if __name__ == "__main__":
    sys.exit(main(bot=Path(__file__).with_name("bot.py")))
