"""The command-line programs (the top layer: they may import every library package, none imports them).

- ``run.py`` (repository root; console script ``prusc-run``): every mode and method;
- :mod:`cli.cluster` (``prusc-cluster``, ``python3 cluster/clustering.py``): ``run.py --mode cluster``;
- :mod:`cli.environments` (``prusc-envs``, ``python3 invariant_learning/environments.py``): IRM environments;
- :mod:`cli.irm` (``prusc-irm``, ``python3 invariant_learning/irm.py``): IRM variants with restarts.
"""
