"""Reports of a stored study: rows, Pareto front, the front re-timed, text and HTML.

Imports: config, errors, spaces, methods, devices, cost, problem, study.
"""
