"""What a node checks in its config when it starts, not when an experiment first needs it: the
modules named for private attributes import, and the attributes and functions they name exist
(a function is still called only where and when an experiment runs). Errors name the config
file, the line of the key at fault, and how to fix it."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fedloom.federation.nodes.config import (
    ConfigError,
    DirectorConfig,
    EnvoyConfig,
    PrivateAttributesSpec,
    _import_module,
)


def check_director_config(config: DirectorConfig) -> None:
    check_private_attributes(config.aggregator, "aggregator")


def check_envoy_config(config: EnvoyConfig) -> None:
    check_private_attributes(config.collaborator, config.name)


def check_private_attributes(spec: PrivateAttributesSpec, section: str) -> None:
    """Import what ``spec`` names (under ``section`` of its config file) and check it is there
    and of the right kind; a :class:`ConfigError` otherwise."""
    if not spec.source:
        return
    file = spec.config_file
    tree = _compose(file)
    template = _line(tree, [section, "callable_func", "template"])
    key = f"{section}.callable_func.template" if template else f"{section}.private_attributes"
    at = _at(file, template or _line(tree, [section, "private_attributes"]))
    module_name, _, attr = spec.source.rpartition(".")
    try:
        module = _import_module(module_name, spec.base_dir)
    except (Exception, SystemExit) as exc:  # missing, or failing while it is imported
        raise ConfigError(
            f"{at}: {key} names module '{module_name}', which cannot be imported "
            f"({type(exc).__name__}: {exc}); put {module_name.replace('.', '/')}.py in "
            f"{spec.base_dir} (the config file's folder) or install it, or correct the "
            "name") from exc
    if not hasattr(module, attr):
        public = [name for name in dir(module) if not name.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"{at}: {key}: module '{module_name}' "
                          f"({getattr(module, '__file__', None) or 'built in'}) has no "
                          f"'{attr}'{hint}; define it there, or correct the name")
    target = getattr(module, attr)
    if template and not callable(target):
        raise ConfigError(f"{at}: {key}: '{spec.source}' is a {type(target).__name__}, not a "
                          "function; callable_func.template names a function that returns the "
                          "private attributes (name a dict with private_attributes: instead)")
    if not callable(target):
        if not isinstance(target, dict):
            raise ConfigError(f"{at}: {key}: '{spec.source}' is a {type(target).__name__}; "
                              "it must be a dict of private attributes, or a function that "
                              "returns one")
        return
    settings_line = _line(tree, [section, "callable_func", "settings"])
    _check_arguments(target, spec, _at(file, settings_line) if settings_line else at,
                     section if template else "")


def _check_arguments(function: Any, spec: PrivateAttributesSpec, at: str, section: str) -> None:
    """The function can be called with the config's settings (``section``: the callable_func
    form; "": the private_attributes form, called without arguments)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to check (some built-ins)
        return
    try:
        signature.bind(**spec.settings)
    except TypeError as exc:
        if not section:
            raise ConfigError(f"{at}: {spec.source}{signature} is called without arguments "
                              f"({exc}); give it defaults, or name it in callable_func.template "
                              "with its settings") from None
        given = ", ".join(spec.settings) or "none"
        raise ConfigError(f"{at}: {section}.callable_func.settings (given: {given}) do not fit "
                          f"{spec.source}{signature}: {exc}; make the settings match the "
                          "function's parameters") from None


def _compose(file: Path) -> yaml.Node | None:
    try:
        return yaml.compose(file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):  # it was read once already; lines are a nicety
        return None


def _line(node: yaml.Node | None, path: Sequence[str]) -> int:
    """The 1-based line of the last key of ``path`` in the composed YAML; 0 if absent."""
    line = 0
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return 0
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            return 0
    return line


def _at(file: Path, line: int) -> str:
    return f"{file}:{line}" if line else str(file)
