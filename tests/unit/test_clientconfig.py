"""moray.clientconfig: server, token and CA from flags > environment > config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from moray.clientconfig import DEFAULT_SERVER, ClientConfig, config_path
from moray.errors import ConfigError


def _file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return {"MORAY_CONFIG": str(path)}


def test_flags_over_environment_over_file(tmp_path: Path) -> None:
    env = _file(tmp_path, "server: http://file:1\ntoken: file-token\nca: /file/ca.pem\n")
    assert ClientConfig.resolve(environ=env) == ClientConfig(
        "http://file:1", "file-token", "/file/ca.pem")
    env |= {"MORAY_SERVER": "http://env:2", "MORAY_TOKEN": "env-token"}
    assert ClientConfig.resolve(environ=env) == ClientConfig(
        "http://env:2", "env-token", "/file/ca.pem")
    env["MORAY_CA"] = "/env/ca.pem"
    assert ClientConfig.resolve("http://flag:3", None, "/flag/ca.pem", environ=env) == \
        ClientConfig("http://flag:3", "env-token", "/flag/ca.pem")
    assert ClientConfig.resolve("http://flag:3", "flag-token", "/flag/ca.pem",
                                environ=env).token == "flag-token"


def test_default_file_location(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert config_path(home) == (tmp_path / ".config" / "moray" / "config.yaml", False)
    xdg = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "x")}
    assert config_path(xdg) == (tmp_path / "x" / "moray" / "config.yaml", False)
    assert ClientConfig.resolve(environ=home) == ClientConfig()   # no file: nothing set
    (tmp_path / ".config" / "moray").mkdir(parents=True)
    (tmp_path / ".config" / "moray" / "config.yaml").write_text("server: http://h:7080\n")
    assert ClientConfig.resolve(environ=home).server == "http://h:7080"


def test_file_is_read_only_when_a_setting_is_missing(tmp_path: Path) -> None:
    env = {"MORAY_CONFIG": str(tmp_path / "missing.yaml"), "MORAY_SERVER": "http://e",
           "MORAY_TOKEN": "t", "MORAY_CA": "c"}
    assert ClientConfig.resolve(environ=env) == ClientConfig("http://e", "t", "c")
    del env["MORAY_CA"]
    with pytest.raises(ConfigError, match="no such config file"):
        ClientConfig.resolve(environ=env)


@pytest.mark.parametrize(("text", "message"), [
    ("server: [a]\n", "server: must be a string"),
    ("sever: http://x\n", "unknown key 'sever'"),
    ("- a\n", "must be a mapping"),
    ("server: {\n", "not YAML"),
])
def test_bad_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    env = _file(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        ClientConfig.resolve(environ=env)
    assert str(err.value).startswith(str(tmp_path / "config.yaml"))


def test_relative_ca_is_next_to_the_file(tmp_path: Path) -> None:
    env = _file(tmp_path, "ca: pki/ca.pem\n")
    assert ClientConfig.resolve(environ=env).ca == str(tmp_path / "pki" / "ca.pem")


def test_defaults_of_the_rest_commands(tmp_path: Path) -> None:
    config = ClientConfig()
    assert config.base_url == DEFAULT_SERVER and config.verify() is True
    (tmp_path / "admin.token").write_text("first-admin\n")
    assert config.api_token({"MORAY_DATA_DIR": str(tmp_path)}) == "first-admin"
    assert ClientConfig(token="t").api_token({"MORAY_DATA_DIR": str(tmp_path)}) == "t"
    assert config.api_token({"MORAY_DATA_DIR": str(tmp_path / "none")}) is None
    assert ClientConfig(server="http://h:1/").base_url == "http://h:1"


def test_one_http_client(tmp_path: Path) -> None:
    client = ClientConfig(server="http://h:1").http_client("tok", timeout=5)
    try:
        assert str(client.base_url) == "http://h:1"
        assert client.headers["Authorization"] == "Bearer tok"
    finally:
        client.close()
