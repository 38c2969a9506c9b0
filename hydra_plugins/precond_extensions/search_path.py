"""Hydra finds the config groups that installed packages ship (``precond.configs`` entry points).

Hydra imports every module under ``hydra_plugins`` and calls each ``SearchPathPlugin``; this one appends
``pkg://<module>`` for every package registered under the entry-point group ``precond.configs``, so
``precond-train preconditioner=<theirs>`` and ``experiment=<theirs>`` resolve with no change to precond.
Only installed packages are read: never a run dir or a config value.
"""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from precond.extensions import config_search_paths


class PrecondExtensionsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for path in config_search_paths():
            search_path.append(provider="precond-extension", path=path)
