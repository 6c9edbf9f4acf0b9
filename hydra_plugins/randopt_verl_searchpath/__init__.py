"""Hydra search-path plugin: makes randopt_verl's configs visible to verl's own entry point, so that
    python -m verl.trainer.main_ppo --config-name randopt_ppo trainer=randopt ...
composes the same config as `python -m randopt_verl.main trainer=randopt ...`."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class RandOptVerlSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="randopt_verl", path="pkg://randopt_verl.config")
