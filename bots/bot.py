"""The example bot, run once per cluster: it is zmqcross/demo/bot.py, read that file.

The bot ships inside the package (so `zmqcross demo` needs no checkout); this file runs
it as the cluster's ``__main__``, so a machine can be pointed at bots/bot.py (the compose
file does) without a second copy to keep in step. To write your own bot, copy
zmqcross/demo/bot.py here in place of these lines.
"""

import runpy

runpy.run_module("zmqcross.demo.bot", run_name="__main__", alter_sys=True)
