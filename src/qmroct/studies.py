"""Studies: KQI criteria that decide whether a scan is usable for a study.

A criterion is ``<algorithm>.<kqi> <op> <number>`` (``noise.snr_db >= 15``),
or ``<kqi> <op> <number>`` when only one declared algorithm has that KQI.
A scan passes a study when it passes every criterion; a KQI that could not be
computed (algorithm failure, bad scan) is "missing", which never passes.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

OPERATORS = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_CRITERION = re.compile(
    r"^\s*(?:([a-z][a-z0-9_]*)\.)?([A-Za-z][\w]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class CriterionError(ValueError):
    pass


@dataclass(frozen=True)
class Criterion:
    algorithm: str
    kqi: str
    op: str
    threshold: float
    text: str

    @property
    def column(self) -> str:
        return f"{self.algorithm}.{self.kqi}"

    def evaluate(self, value: float | None) -> str:
        """'pass', 'fail' or 'missing'."""
        if value is None or value != value:  # None or NaN
            return "missing"
        return "pass" if OPERATORS[self.op](value, self.threshold) else "fail"


def parse_criterion(text: str, kqis_by_algorithm: dict[str, set[str]]) -> Criterion:
    """Parse and resolve against the declared algorithms' KQIs."""
    match = _CRITERION.match(text)
    if not match:
        raise CriterionError(f"cannot parse criterion {text!r}; expected e.g. 'noise.snr_db >= 15'")
    algorithm, kqi, op, number = match.groups()
    if algorithm is None:
        owners = sorted(a for a, names in kqis_by_algorithm.items() if kqi in names)
        if not owners:
            raise CriterionError(f"criterion {text!r}: no declared algorithm has a KQI {kqi!r}")
        if len(owners) > 1:
            raise CriterionError(
                f"criterion {text!r}: KQI {kqi!r} is ambiguous ({', '.join(owners)}); "
                f"write <algorithm>.{kqi}"
            )
        algorithm = owners[0]
    elif algorithm not in kqis_by_algorithm:
        raise CriterionError(
            f"criterion {text!r}: algorithm {algorithm!r} is not declared in config.yaml"
        )
    elif kqi not in kqis_by_algorithm[algorithm]:
        known = ", ".join(sorted(kqis_by_algorithm[algorithm]))
        raise CriterionError(
            f"criterion {text!r}: algorithm {algorithm!r} has no KQI {kqi!r} (it has: {known})"
        )
    return Criterion(algorithm, kqi, op, float(number), text.strip())
