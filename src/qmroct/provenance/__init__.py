"""Provenance for results a paper can cite (issue 10).

* :mod:`identity`: what makes a result what it is (the qmroct code on the path from
  archive bytes to the KQI file) and what it ran on (packages, runtimes, git state);
* :mod:`run_manifest`: one ``results/runs/<run-id>/manifest.json`` per workflow run;
* :mod:`freeze`: a result set as a Provenance Run Crate (``qmroct freeze``);
* :mod:`rerun`: recompute a frozen set and compare every KQI (``qmroct rerun``).
"""
