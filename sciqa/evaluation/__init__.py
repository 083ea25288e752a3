"""Evidence about results: ``sciqa eval``, ``sciqa report``, ``sciqa audit``.

``evaluate`` (scores, intervals, paired differences), ``intervals`` (bootstrap), ``chance``,
``evidence`` (members and ensembles read back from run dirs), ``audit`` (bias shortcuts),
``report/`` (the HTML page). Imports the kernel only; never a stage.
"""
