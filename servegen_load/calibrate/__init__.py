"""A calibrated twin of an endpoint: probe it, fit the simulator's engine model, check the fit.

Modules: `probe` (the bounded probe runs and what the server says of its limits), `fit` (the
regression of the step costs on per-chunk and per-request timings), `preset` (the fitted model as
a preset YAML), `command` (the `calibrate` command and its `--check`).
"""
