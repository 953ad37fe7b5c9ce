"""Reports of a stored study: rows, Pareto front, text and HTML (collect), and the final
re-timing that picks the best on what repeats (retime).

Imports: config, errors, spaces, methods, devices, cost, problem, study, backends.
"""
