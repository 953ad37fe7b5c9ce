"""The study: what is stored and how a trial becomes a record.

records (handles, which trials count, the best feasible trial; the typed trial and study
attributes), budget (the budget as one value: targets, constraints, verdicts), storage (SQLite, journal,
PostgreSQL; owners and stale trials), trial (propose, evaluate, record), transfer (trials from
another device's study), seeds (sensitivity-seeded plans), session (SearchSession: a prepared
study, what a backend is handed).

Imports: config, errors, spaces, methods, devices, problem, cost. (Never backends, search, report or
cli: the backends import the study, and a study is read without running anything.)
"""
