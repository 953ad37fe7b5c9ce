"""Reports of a stored study: rows, Pareto front, the front re-timed, text and HTML.

Rules: report may import everything except cli.
"""
