"""The study: what is stored and how a trial becomes a record.

records (handles, which trials count, the best feasible trial), storage (SQLite, journal,
PostgreSQL; owners and stale trials), trial (propose, evaluate, record), transfer (trials from
another device's study), seeds (sensitivity-seeded plans).

Rules: study imports config, errors, spaces, methods, problem and cost; never backends,
`searcher.search`, report or cli.
"""
