"""The isolated test servers' hidden paths (tests/cloud/isolation.py)."""

from tests.cloud.isolation import outermost


def test_nested_hidden_paths_are_covered_by_their_parent():
    # a CI clone under /tmp, a home above a checkout: one mount each for the outermost only
    assert outermost(["/tmp", "/root", "/tmp/ci1", "/root/work/repo"]) == ["/tmp", "/root"]
    assert outermost(["/work/repo", "/tmp", "/root", "/tmp"]) == ["/tmp", "/root", "/work/repo"]
    # a sibling with a common prefix is not inside
    assert outermost(["/tmp", "/tmpfoo"]) == ["/tmp", "/tmpfoo"]
    assert outermost(["/"]) == ["/"]
