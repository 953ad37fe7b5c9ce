"""Execution backends: who runs the trials of a prepared study.

isolate (one trial per child process, limits, crash recovery), workers (K processes on one
storage), raytune (Ray Tune), signals (two-stage Ctrl-C / SIGTERM), faults (injected faults for
tests), progress (the progress display).

Imports: study, problem, devices, config, errors, methods. (Never search, report or cli: a backend is handed
a prepared study and runs it.)
"""
