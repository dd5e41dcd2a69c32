"""`make demo` (README's first command) runs the whole example fleet and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_demo_runs_the_fleet_and_exits_zero(tmp_path: Path) -> None:
    # `zmqcross demo`, from a folder with no bots/ in it: the installed package carries all it
    # needs. `make demo` (bots/demo.py) is the same run with bots/bot.py, which runs the
    # package's bot (test_there_is_one_example_bot, test_make_demo_is_the_same_run).
    result = subprocess.run(
        [sys.executable, "-m", "zmqcross", "demo"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    counts = [int(n) for n in re.findall(r"\[dashboard\] cluster \d: (\d+) guilds", out)]
    assert len(counts) == 4 and sum(counts) == 2000
    assert "[dashboard] total: 2000 guilds on 4 clusters" in out
    assert re.search(r"request_to_guild\(\d+\) -> 'Guild 1234' on cluster \d \(shard \d\)", out)
    # A user's command end to end: said in guild #1234 on the offline Discord, answered by the
    # cluster holding its shard (cluster = shard // 2 in the demo's plan).
    pong = re.search(r"'@bot ping' in guild \d+ -> 'pong from cluster (\d) \(shard (\d)\)'", out)
    assert pong and int(pong.group(1)) == int(pong.group(2)) // 2, out
    assert re.search(r"broadcast_eval\('1 \+ 1'\) over 4 clusters: p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    # Paced by the bridge against an offline Discord that enforces the limits: nothing refused.
    assert "IDENTIFY queue: 8 slots granted in 2 buckets" in out
    assert "the offline Discord refused 0 of 8 IDENTIFYs" in out
    seconds = float(re.search(r"\[demo\] done in ([\d.]+) s", out).group(1))  # type: ignore[union-attr]
    assert seconds < 60


def test_make_demo_is_the_same_run() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "bots/demo.py" in makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    wrapper = (ROOT / "bots" / "demo.py").read_text()
    assert "from zmqcross.demo import main" in wrapper and 'main(bot=Path(__file__).with_name("bot.py"))' in wrapper


def test_there_is_one_example_bot() -> None:
    # zmqcross/demo/bot.py ships with the package (so `zmqcross demo` runs anywhere);
    # bots/bot.py runs that same file instead of keeping a copy that drifts.
    shipped = (ROOT / "zmqcross" / "demo" / "bot.py").read_text()
    example = (ROOT / "bots" / "bot.py").read_text()
    assert "def guild_info" in shipped and "async def on_message" in shipped
    assert "discord" not in example.replace("discord.py", "") and "zmqcross.demo.bot" in example
