"""Director and envoy YAML configs: the spec's examples, defaults, and clear errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fedloom.federation.nodes.config import ConfigError, load_director_config, load_envoy_config
from tests.federation.nodes import PRIVATE_ATTRIBUTES, envoy_config, fx

PRIVATE = """
aggregator_attrs = {"test_set": [1, 2, 3]}
envoy_one_attrs = {"shard": [4, 5]}

def make_attrs(size, label="x"):
    return {"data": list(range(size)), "label": label}

not_a_dict = [1, 2]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "private_attributes.py").write_text(PRIVATE)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_spec_director_config(folder):
    path = write(folder, "director_config.yaml", """
settings:
    listen_host: localhost
    listen_port: 50050
    envoy_health_check_period: 5

aggregator:
    private_attributes: private_attributes.aggregator_attrs
""")
    config = load_director_config(path)
    assert (config.listen_host, config.listen_port) == ("localhost", 50050)
    assert config.envoy_health_check_period == 5.0
    assert config.review_experiment is True  # absent means true
    assert config.aggregator.build() == {"test_set": [1, 2, 3]}


def test_spec_envoy_config_and_callable_form(folder):
    plain = write(folder, "envoy_config.yaml", """
envoy_one:
    private_attributes: private_attributes.envoy_one_attrs
""")
    config = load_envoy_config(plain, "envoy_one")
    assert config.collaborator.build() == {"shard": [4, 5]} and config.review_experiment
    with_callable = write(folder, "envoy_two.yaml", """
envoy two:
    callable_func:
        template: private_attributes.make_attrs
        settings: {size: 3, label: b}
settings:
    review_experiment: false
""")
    config = load_envoy_config(with_callable, "envoy two")
    assert config.collaborator.build() == {"data": [0, 1, 2], "label": "b"}
    assert config.review_experiment is False


def test_defaults_and_empty_sections(folder):
    config = load_director_config(write(folder, "d.yaml", "settings: {listen_port: 6000}\n"))
    assert config.listen_host == "localhost" and config.listen_port == 6000
    assert config.aggregator.build() == {}
    assert load_envoy_config(write(folder, "e.yaml", ""), "any").collaborator.build() == {}


@pytest.mark.parametrize("text, message", [
    ("settings: [1]", "settings must be a mapping"),
    ("settings: {listen_port: '50050'}", "settings.listen_port must be int"),
    ("settings: {listen_port: true}", "settings.listen_port must be int"),
    ("settings: {envoy_health_check_period: 0}", "must be > 0"),
    ("settings: {listen_prot: 1}", "unknown key(s) ['listen_prot'] in settings"),
    ("aggregatr: {}", "unknown key(s) ['aggregatr']"),
    ("aggregator: {private_attributes: nodot}", "as module.attribute"),
    ("aggregator: {private_attributes: a.b, callable_func: {template: a.b}}", "keep one"),
    ("settings: {listen_port: [", "is not valid YAML"),
])
def test_director_config_errors_name_file_and_key(folder, text, message):
    path = write(folder, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_director_config(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_private_attribute_sources_that_fail(folder):
    missing_module = write(folder, "m.yaml", "aggregator: {private_attributes: nope.attrs}\n")
    with pytest.raises(ConfigError, match="cannot import module 'nope'"):
        load_director_config(missing_module).aggregator.build()
    missing_attr = write(folder, "a.yaml",
                         "aggregator: {private_attributes: private_attributes.nothing}\n")
    with pytest.raises(ConfigError, match="has no 'nothing'"):
        load_director_config(missing_attr).aggregator.build()
    not_dict = write(folder, "n.yaml",
                     "aggregator: {private_attributes: private_attributes.not_a_dict}\n")
    with pytest.raises(ConfigError, match="gave a list, not a dict"):
        load_director_config(not_dict).aggregator.build()
    with pytest.raises(ConfigError, match="does not exist"):
        load_director_config(folder / "absent.yaml")


def test_envoy_section_must_match_the_name(folder):
    path = write(folder, "e.yaml", "envoy_one:\n    private_attributes: private_attributes."
                                   "envoy_one_attrs\n")
    with pytest.raises(ConfigError, match="must be named 'envoy_two'"):
        load_envoy_config(path, "envoy_two")


def test_review_timeout_is_seconds_or_absent(folder):
    director = write(folder, "d.yaml", "settings: {review_timeout: 90}\n")
    assert load_director_config(director).review_timeout == 90.0
    envoy = write(folder, "e.yaml", "settings: {review_timeout: 2.5}\n")
    assert load_envoy_config(envoy, "site").review_timeout == 2.5
    assert load_envoy_config(write(folder, "f.yaml", "{}\n"), "site").review_timeout is None
    for bad in ("0", "-1", "true", "soon"):
        path = write(folder, "bad.yaml", f"settings: {{review_timeout: {bad}}}\n")
        with pytest.raises(ConfigError, match=r"settings\.review_timeout must be"):
            load_envoy_config(path, "site")


# -- what a node checks when it starts (fedloom.federation.nodes.config_check) ---------------------


def check_director(path: Path) -> None:
    from fedloom.federation.nodes.config_check import check_director_config

    check_director_config(load_director_config(path))


def test_a_good_config_passes_the_start_check_without_calling_the_function(folder):
    from fedloom.federation.nodes.config_check import check_envoy_config

    (folder / "calls.py").write_text("calls = []\ndef make(size):\n    calls.append(size)\n"
                                     "    return {}\n")
    path = write(folder, "e.yaml", "site:\n  callable_func:\n    template: calls.make\n"
                                   "    settings: {size: 3}\n")
    check_envoy_config(load_envoy_config(path, "site"))
    check_director(write(folder, "d.yaml", "aggregator:\n  private_attributes: "
                                           "private_attributes.aggregator_attrs\n"))
    [module] = [m for m in list(sys.modules.values())
                if getattr(m, "__file__", None) == str(folder / "calls.py")]
    assert module.calls == []  # imported and checked, not called


@pytest.mark.parametrize("aggregator, line, message", [
    ("  private_attributes: nope.attrs\n", 3,
     "aggregator.private_attributes names module 'nope', which cannot be imported "
     "(ModuleNotFoundError"),
    ("  private_attributes: private_attributes.envoy_one_attr\n", 3,
     "aggregator.private_attributes: module 'private_attributes' "),
    ("  callable_func:\n    template: private_attributes.make_atrs\n", 4,
     "has no 'make_atrs' (did you mean 'make_attrs'?); define it there, or correct the name"),
    ("  callable_func:\n    template: private_attributes.aggregator_attrs\n", 4,
     "'private_attributes.aggregator_attrs' is a dict, not a function"),
    ("  private_attributes: private_attributes.not_a_dict\n", 3,
     "is a list; it must be a dict of private attributes, or a function that returns one"),
    ("  callable_func:\n    template: private_attributes.make_attrs\n"
     "    settings: {sise: 3}\n", 5,
     "aggregator.callable_func.settings (given: sise) do not fit "
     "private_attributes.make_attrs(size, label='x')"),
    ("  private_attributes: private_attributes.make_attrs\n", 3,
     "is called without arguments"),
], ids=["missing-module", "missing-attribute", "did-you-mean", "template-not-callable",
        "not-a-dict", "wrong-settings", "needs-arguments"])
def test_the_start_check_names_the_file_the_line_and_the_fix(folder, aggregator, line, message):
    path = write(folder, "d.yaml", f"settings: {{listen_port: 1}}\naggregator:\n{aggregator}")
    with pytest.raises(ConfigError) as info:
        check_director(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)


# -- fx director start / fx envoy start check their config before anything else ------------

DIRECTOR_HEAD = "settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\naggregator:\n"


@pytest.mark.parametrize("source, error", [
    ("nope.attrs", r"names module 'nope', which cannot be imported"),
    ("private_attributes.nothing", r"module 'private_attributes' \(.*\) has no 'nothing'"),
], ids=["missing-module", "missing-attribute"])
def test_a_director_with_a_broken_private_attributes_source_does_not_start(
        tmp_path, source, error):
    (tmp_path / "private_attributes.py").write_text(PRIVATE_ATTRIBUTES)
    config = tmp_path / "director.yaml"
    config.write_text(f"{DIRECTOR_HEAD}  private_attributes: {source}\n")
    done = fx(["director", "start", "-c", str(config), "--disable-tls"], tmp_path)
    assert done.returncode == 1
    assert re.search(rf"{re.escape(str(config))}:5: aggregator\.private_attributes", done.stderr)
    assert re.search(error, done.stderr), done.stderr
    assert "listening" not in done.stdout


@pytest.mark.parametrize("template, error", [
    ("nope.envoy_data", r"names module 'nope', which cannot be imported"),
    ("private_attributes.envoy_dat", r"has no 'envoy_dat' \(did you mean 'envoy_data'\?\)"),
], ids=["missing-module", "missing-attribute"])
def test_an_envoy_with_a_broken_private_attributes_source_does_not_start(
        tmp_path, template, error):
    (tmp_path / "private_attributes.py").write_text(PRIVATE_ATTRIBUTES)
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy_config("Oslo", 1.0).replace("private_attributes.envoy_data",
                                                         template))
    done = fx(["envoy", "start", "-n", "Oslo", "-ec", str(config), "-dh", "127.0.0.1",
               "-dp", "9", "--disable-tls"], tmp_path)  # it never gets to dial
    assert done.returncode == 1
    assert re.search(rf"{re.escape(str(config))}:5: Oslo\.callable_func\.template",
                     done.stderr), done.stderr
    assert re.search(error, done.stderr), done.stderr
    assert "connecting" not in done.stdout
