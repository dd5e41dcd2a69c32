"""The restart decision and the failure summary of cluster/_lifecycle.py: pure, no processes."""

from __future__ import annotations

from zmqcross.cluster._lifecycle import GiveUp, Restart, RestartPolicy, _Cluster, after_exit, error_summary
from zmqcross.protocol import ErrorInfo

TRACE = (
    "Traceback (most recent call last):\n"
    + "".join(f'  File "bot.py", line {n}, in f{n}\n    f{n + 1}()\n' for n in range(20))
    + "RuntimeError: boom"
)


def test_a_crash_is_restarted_with_backoff_up_to_the_cap() -> None:
    c = _Cluster(0, (0, 1))
    crash = ErrorInfo(code="error", type="RuntimeError", message="boom", traceback=TRACE)
    policy = RestartPolicy(max_restarts=2, interval=60)
    assert after_exit(c, now=0.0, policy=policy, report=crash) == Restart(0.5)
    assert after_exit(c, now=1.0, policy=policy, report=None) == Restart(1.0)
    decision = after_exit(c, now=2.0, policy=policy, report=crash)
    assert isinstance(decision, GiveUp) and "restart cap reached" in decision.reason and c.restarts == 2
    assert after_exit(c, now=70.0, policy=policy, report=crash) == Restart(0.5)  # the window moved on


def test_a_mistake_in_the_bot_file_is_never_restarted() -> None:
    c = _Cluster(3, (6,))
    mistake = ErrorInfo(
        code="configuration", type="ConfigurationError", message="cluster 3: use X", traceback=TRACE
    )
    decision = after_exit(c, now=0.0, policy=RestartPolicy(), report=mistake)
    assert isinstance(decision, GiveUp) and c.restarts == 0
    assert error_summary(mistake) == "ConfigurationError: cluster 3: use X"


def test_the_summary_keeps_the_traceback_end() -> None:
    lines = error_summary(
        ErrorInfo(code="error", type="RuntimeError", message="boom", traceback=TRACE)
    ).splitlines()
    assert (
        len(lines) == 12
        and lines[-1] == "RuntimeError: boom"
        and lines[-3].startswith('  File "bot.py", line 19')
    )
    qualified = TRACE.replace("RuntimeError: boom", "zmqcross.errors.ScriptError: bad")
    assert error_summary(
        ErrorInfo(code="script", type="ScriptError", message="bad", traceback=qualified)
    ).endswith("\nzmqcross.errors.ScriptError: bad")
    assert error_summary(ErrorInfo(code="error", type="OSError", message="gone")) == "OSError: gone"
