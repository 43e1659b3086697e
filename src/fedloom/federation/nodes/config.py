"""Director and envoy configuration files (YAML), as the Workflow API documents them.

Director::

    settings:
      listen_host: localhost
      listen_port: 50050
      envoy_health_check_period: 5     # seconds
      review_experiment: true          # plan review (default true when absent)
    aggregator:
      private_attributes: private_attributes.aggregator_attrs
      # or: callable_func: {template: private_attributes.make_attrs, settings: {...}}

Envoy (the top-level key is the envoy's name)::

    envoy_one:
      private_attributes: private_attributes.envoy_one_attrs
    settings:
      review_experiment: false

Modules named in ``private_attributes`` / ``template`` are resolved relative to the config file's
folder. Every error names the file, the key and how to fix it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from fedloom.errors import FedloomError
from fedloom.federation.nodes.limits import Limits


class ConfigError(FedloomError):
    """A configuration file is missing, malformed, or names something that does not exist."""


@dataclass(frozen=True)
class PrivateAttributesSpec:
    """Where a participant's private attributes come from (built where the participant lives)."""

    source: str  # "module.attr" (a dict or a callable), or "" for none
    settings: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    config_file: Path = Path("config.yaml")

    def build(self) -> dict[str, Any]:
        """Import the named object (relative to the config's folder) and make the dict."""
        if not self.source:
            return {}
        target = _import_object(self.source, self.base_dir, self.config_file)
        value = target(**self.settings) if callable(target) else target
        if not isinstance(value, dict):
            raise ConfigError(f"{self.config_file}: '{self.source}' gave a "
                              f"{type(value).__name__}, not a dict of private attributes; "
                              "return {'name': value, ...}")
        return value


@dataclass(frozen=True)
class DirectorConfig:
    listen_host: str
    listen_port: int
    envoy_health_check_period: float
    review_experiment: bool
    aggregator: PrivateAttributesSpec
    review_timeout: float | None = None  # seconds a plan may wait for a decision; None: no limit
    wait_for_envoys: float = 60.0  # seconds an experiment waits for offline envoys
    limits: Limits = field(default_factory=Limits)
    visibility: str = "online"  # what users see of envoys: one of VISIBILITY


@dataclass(frozen=True)
class EnvoyConfig:
    name: str
    review_experiment: bool
    collaborator: PrivateAttributesSpec
    review_timeout: float | None = None


# What users see of envoys (settings.visibility): their names; and whether each is online
# (the default); and when each was last seen and whether it is busy (the experiment only when it
# is the user's own). Never other users' experiments.
VISIBILITY = ("names", "online", "activity")

DIRECTOR_SETTINGS: dict[str, tuple[type, ...]] = {
    "listen_host": (str,), "listen_port": (int,), "envoy_health_check_period": (int, float),
    "review_experiment": (bool,), "review_timeout": (int, float), "visibility": (str,),
    "wait_for_envoys": (int, float), "first_message_timeout": (int, float),
    "upload_idle_timeout": (int, float),
    **{name: (int,) for name in ("max_streams_per_peer", "max_uploads_per_peer",
                                 "max_queued_per_user")}}


def load_director_config(path: str | Path) -> DirectorConfig:
    """Read a director config; defaults: localhost:50050, health check every 5 s, review on."""
    file, data = _read(path)
    _only_keys(file, data, {"settings", "aggregator"}, "the top level")
    settings = _mapping(file, data.get("settings") or {}, "settings")
    _only_keys(file, settings, set(DIRECTOR_SETTINGS), "settings")
    for key, kinds in DIRECTOR_SETTINGS.items():
        value = settings.get(key)
        wrong_bool = isinstance(value, bool) and bool not in kinds  # True is an int in Python
        if key in settings and (not isinstance(value, kinds) or wrong_bool):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{file}: settings.{key} must be {names}, got {value!r}")
    visibility = settings.get("visibility", "online")
    if visibility not in VISIBILITY:
        raise ConfigError(f"{file}: settings.visibility must be one of {', '.join(VISIBILITY)} "
                          f"(what users see of envoys), got {visibility!r}")
    period = float(settings.get("envoy_health_check_period", 5))
    if period <= 0:
        raise ConfigError(f"{file}: settings.envoy_health_check_period must be > 0 seconds")
    return DirectorConfig(
        listen_host=settings.get("listen_host", "localhost"),
        listen_port=int(settings.get("listen_port", 50050)),
        envoy_health_check_period=period,
        review_experiment=bool(settings.get("review_experiment", True)),
        aggregator=_private_spec(file, data.get("aggregator"), "aggregator"),
        review_timeout=_review_timeout(file, settings),
        wait_for_envoys=_positive(file, settings, "wait_for_envoys", 60.0),
        limits=Limits.from_settings({name: _positive(file, settings, name, 1)
                                     for name in Limits.names() if name in settings}),
        visibility=visibility,
    )


def _positive(file: Path, settings: dict[str, Any], key: str, default: float) -> Any:
    value = settings.get(key, default)
    if value <= 0:
        raise ConfigError(f"{file}: settings.{key} must be > 0, got {value!r}")
    return value


def _review_timeout(file: Path, settings: dict[str, Any]) -> float | None:
    value = settings.get("review_timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{file}: settings.review_timeout must be a number of seconds > 0 "
                          f"(leave it out for no limit), got {value!r}")
    return float(value)


def load_envoy_config(path: str | Path, name: str) -> EnvoyConfig:
    """Read an envoy config for envoy ``name`` (its section may be absent: no private data)."""
    file, data = _read(path)
    settings = _mapping(file, data.get("settings") or {}, "settings")
    _only_keys(file, settings, {"review_experiment", "review_timeout"}, "settings")
    others = sorted(k for k in data if k not in ("settings", name))
    if others:
        raise ConfigError(f"{file}: section(s) {others} are not for envoy '{name}'; the "
                          f"section with private attributes must be named '{name}' (as -n)")
    review = settings.get("review_experiment", True)
    if not isinstance(review, bool):
        raise ConfigError(f"{file}: settings.review_experiment must be true or false")
    return EnvoyConfig(name, review, _private_spec(file, data.get(name), name),
                       _review_timeout(file, settings))


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    return file, _mapping(file, data or {}, "the top level")


def _mapping(file: Path, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {where} must be a mapping of key: value, got "
                          f"{type(value).__name__}")
    return value


def _only_keys(file: Path, data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{file}: unknown key(s) {unknown} in {where}; allowed: "
                          f"{sorted(allowed)}")


def _private_spec(file: Path, section: Any, where: str) -> PrivateAttributesSpec:
    def spec(source: str, settings: Mapping[str, Any] | None = None) -> PrivateAttributesSpec:
        return PrivateAttributesSpec(source, dict(settings or {}), file.resolve().parent, file)

    if section is None:
        return spec("")
    section = _mapping(file, section, where)
    _only_keys(file, section, {"private_attributes", "callable_func"}, where)
    if "private_attributes" in section and "callable_func" in section:
        raise ConfigError(f"{file}: {where} has both private_attributes and callable_func; "
                          "keep one")
    if "callable_func" in section:
        func = _mapping(file, section["callable_func"], f"{where}.callable_func")
        _only_keys(file, func, {"template", "settings"}, f"{where}.callable_func")
        template = func.get("template")
        if not isinstance(template, str) or "." not in template:
            raise ConfigError(f"{file}: {where}.callable_func.template must name a function "
                              "as module.function")
        settings = _mapping(file, func.get("settings") or {}, f"{where}.callable_func.settings")
        return spec(template, settings)
    source = section.get("private_attributes")
    if not isinstance(source, str) or "." not in source:
        raise ConfigError(f"{file}: {where}.private_attributes must name a dict or function "
                          "as module.attribute")
    return spec(source)


def _import_object(dotted: str, base_dir: Path, config_file: Path) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    try:
        module = _import_module(module_name, base_dir)
    except Exception as exc:  # a missing module, or one that fails while it is imported
        raise ConfigError(f"{config_file}: cannot import module '{module_name}' (looked in "
                          f"{base_dir} and the Python path): {type(exc).__name__}: {exc}") \
            from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{config_file}: module '{module_name}' has no '{attr}'")
    return getattr(module, attr)


def _import_module(name: str, base_dir: Path) -> ModuleType:
    """The module file next to the config wins (loaded under a name unique to its path, so two
    configs with a ``private_attributes.py`` each don't share one); else a normal import."""
    path = base_dir.joinpath(*name.split(".")).with_suffix(".py")
    if not path.is_file():
        return importlib.import_module(name)
    unique = f"fedloom_config_{abs(hash(str(path)))}_{name.replace('.', '_')}"
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(base_dir))  # the module may import its own neighbours
    try:
        sys.modules[unique] = module
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique]
        raise
    finally:
        sys.path.remove(str(base_dir))
    return module
