"""Samplers and backends are registered in one way (search.registered, a decorator, as adapters are),
and every name a study file may give has its entry (config's allowed names and the registries agree)."""

from __future__ import annotations

import typing

import optuna


def test_every_allowed_sampler_and_backend_is_registered():
    from slimformer.searcher import config, search

    assert set(search.SAMPLERS) == set(config.SAMPLERS)
    backend = config.SearchSection.model_fields["backend"].annotation
    assert set(search.BACKENDS) == set(typing.get_args(backend))
    for name, make in search.SAMPLERS.items():
        assert isinstance(make(0, 1), optuna.samplers.BaseSampler), name


def test_the_local_backend_is_k_workers_with_several():
    from slimformer.searcher import search
    from slimformer.searcher.backends import local, workers

    class Cfg:
        class search:  # noqa: N801 (the study file's section)
            backend, workers = "local", 1

    assert search._backend(Cfg) is local
    Cfg.search.workers = 3
    assert search._backend(Cfg) is workers
