"""The reaper's rules (reaper.py): which servers belong to a dead run, and its log lines."""

from __future__ import annotations

from snakemake_executor_plugin_openstack import cloud as cl
from snakemake_executor_plugin_openstack.reaper import LineLogger, why_dead


def test_reaper_rules():
    now = 1_000_000.0
    base = {cl.MD_TOOL: cl.TOOL, cl.MD_RUN: "r", cl.MD_OWNER: "me@here", cl.MD_PID: "42"}
    alive = lambda pid: pid == 42  # noqa: E731
    assert why_dead({**base, cl.MD_EXPIRES: str(now + 60)}, now, "here", alive) is None
    assert "expired" in why_dead({**base, cl.MD_EXPIRES: str(now - 1)}, now, "here", alive)
    assert "gone" in why_dead(
        {**base, cl.MD_PID: "7", cl.MD_EXPIRES: str(now + 60)}, now, "here", alive
    )
    # another machine's run: only the lease decides
    assert (
        why_dead({**base, cl.MD_PID: "7", cl.MD_EXPIRES: str(now + 60)}, now, "elsewhere", alive)
        is None
    )
    # not ours: never
    assert why_dead({cl.MD_EXPIRES: "0"}, now, "here", alive) is None


def test_reap_output_reaches_the_pool_log_line_by_line():
    logged = []
    out = LineLogger(lambda level, msg: logged.append((level, msg)), "cleanup: ")
    print("deleting a (1): lease expired", file=out)
    out.write("deleting b")
    assert logged == [("info", "cleanup: deleting a (1): lease expired")]
    out.write(" (2)\n\n")
    assert logged[-1] == ("info", "cleanup: deleting b (2)") and len(logged) == 2
