"""A per-session job as a ``shell:`` command, and the object its step reads.

Why ``shell:`` and not ``script:``: a ``script:`` job starts by unpickling Snakemake's
``snakemake`` object, which imports Snakemake itself (~0.05 s of CPU in every job), and the
Snakemake head resolves and checks every ``script:`` job's script through its source cache
while it builds the DAG (the largest part of qmroct's DAG overhead over a bare workflow,
``benchmarks/workflow``). A ``shell:`` job is a small Python process (:mod:`.client`) that
passes its step to the warm worker.

The command names only the step, the rule and the job's files, all relative: the command
text is what Snakemake's ``code`` rerun trigger compares, so nothing in it may change when the
checkout moves or the interpreter is another. What every job of a run shares (the
workflow's config and folder, the interpreter) goes through the environment, which the
Snakefile sets when it is read (:func:`export_context`) and the jobs inherit, as the scan
readers' limit already does (``rules/common.smk``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from qmroct.warmworker import RUN_FOLDER_ENV

# The run's config and workflow folder (JSON), set by the Snakefile for its jobs.
CONTEXT_ENV = "QMROCT_JOB_CONTEXT"
# The interpreter of the process that read the Snakefile; unset under
# ``--software-deployment-method conda`` (the job's environment's own ``python`` then).
PYTHON_ENV = "QMROCT_JOB_PYTHON"


def export_context(config: dict, workflow_dir: str | Path, use_conda: bool) -> None:
    """For this process's jobs: the config as read (overrides and all), the workflow folder
    and the interpreter. Config never holds secrets (``qmroct.config`` refuses a server URL
    with credentials; passwords come from the environment or ~/.netrc)."""
    context = {"config": config, "workflow_dir": str(Path(workflow_dir).resolve())}
    os.environ[CONTEXT_ENV] = json.dumps(context, default=str)
    os.environ[RUN_FOLDER_ENV] = str(config["scratch_dir"])
    if use_conda:
        os.environ.pop(PYTHON_ENV, None)
    else:
        os.environ[PYTHON_ENV] = sys.executable


def step_command(
    target: str,
    rule: str,
    *,
    input: tuple[str, ...] = (),
    inputs: tuple[str, ...] = (),
    output: tuple[str, ...] = (),
    params: dict[str, str] | None = None,
) -> str:
    """The ``shell:`` text of a job of ``rule`` that runs ``target`` ("module:function").

    The rule's name is written out (or formatted from the job's params), not ``{rule}``:
    Snakemake's linter takes that for a variable from outside the rule.

    ``input``/``output``: names of single files; ``inputs``: names of file lists;
    ``params``: name -> a Snakemake format field under ``params`` (``"algorithm[name]"``).
    """
    # "${QMROCT_JOB_PYTHON:-python}", braces doubled for Snakemake's formatting
    python = '"${{' + PYTHON_ENV + ':-python}}"'
    # -P: the job's folder is not put on sys.path (a file there must not shadow a module)
    parts = [f"{python} -P -m qmroct.warmworker {target} {rule}"]
    parts += [f"--input {n} {{input.{n}:q}}" for n in input]
    parts += [f"--inputs {n} {{input.{n}:q}}" for n in inputs]
    parts += [f"--output {n} {{output.{n}:q}}" for n in output]
    parts += [f"--param {n} {{params.{f}:q}}" for n, f in (params or {}).items()]
    parts.append("--log {log:q}")
    return " ".join(parts)


class Files(list):
    """A job's input or output files: by position and by name, like Snakemake's lists."""

    def __init__(self, named: list[tuple[str, Any]] = ()) -> None:
        super().__init__()
        self._names: dict[str, Any] = {}
        for name, value in named:
            self._names[name] = value
            self.extend(value if isinstance(value, list) else [value])

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_names"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class StepJob:
    """What a step reads of its job (the part of Snakemake's ``snakemake`` object it uses)."""

    rule: str
    input: Files = field(default_factory=Files)
    output: Files = field(default_factory=Files)
    log: list[str] = field(default_factory=list)
    params: SimpleNamespace = field(default_factory=SimpleNamespace)
    config: dict = field(default_factory=dict)
    workflow_dir: str = ""

    @property
    def scriptdir(self) -> str:
        """The workflow's ``scripts/`` folder, as a ``script:`` job sees it."""
        return str(Path(self.workflow_dir) / "scripts")


class JobArgumentError(ValueError):
    pass


def read_command(argv: list[str]) -> tuple[str, StepJob]:
    """:func:`parse`, or the job ends here with a one-line error and exit status 2 (wherever
    the command is read: in the job's entry process or in the warm worker's job process)."""
    try:
        return parse(argv)
    except JobArgumentError as err:
        print(f"qmroct: {err}", file=sys.stderr)
        sys.exit(2)


def parse(argv: list[str], environ=os.environ) -> tuple[str, StepJob]:
    """``TARGET RULE [--input NAME FILE] [--inputs NAME FILE...] [--output NAME FILE]
    [--param NAME VALUE] [--log FILE...]`` -> (target, job)."""
    if len(argv) < 2:
        raise JobArgumentError("usage: python -m qmroct.warmworker TARGET RULE [--input ...]")
    target, rule, rest = argv[0], argv[1], argv[2:]
    try:
        context = json.loads(environ[CONTEXT_ENV])
    except (KeyError, ValueError):
        raise JobArgumentError(
            f"{CONTEXT_ENV} is not set: this command is run by the workflow's jobs "
            "(the Snakefile sets it), not by hand"
        ) from None
    groups: dict[str, list[tuple[str, Any]]] = {"input": [], "output": [], "param": []}
    logs: list[str] = []
    i = 0
    while i < len(rest):
        option = rest[i]
        values = []
        i += 1
        while i < len(rest) and not rest[i].startswith("--"):
            values.append(rest[i])
            i += 1
        if option == "--log":
            logs += values
        elif option in ("--input", "--output", "--param") and len(values) == 2:
            groups[option[2:]].append((values[0], values[1]))
        elif option == "--inputs" and values:
            groups["input"].append((values[0], values[1:]))
        else:
            raise JobArgumentError(f"unexpected argument {option} {' '.join(values)}")
    job = StepJob(
        rule=rule,
        input=Files(groups["input"]),
        output=Files(groups["output"]),
        log=logs,
        params=SimpleNamespace(**dict(groups["param"])),
        config=context["config"],
        workflow_dir=context["workflow_dir"],
    )
    return target, job
