"""Execution backends: who runs the trials of a prepared study.

Each backend has one entry, `run(session)` with a prepared `study.session.SearchSession`:
local (the trial loop in this process), workers (K processes on one storage), raytune (Ray
Tune). What they use: isolate (one trial per child process, limits, crash recovery), signals
(two-stage Ctrl-C / SIGTERM), faults (injected faults for tests), progress (the progress display).

Imports: study, problem, devices, config, errors, methods. (Never search, report or cli: a backend is handed
a prepared study and runs it.)
"""
