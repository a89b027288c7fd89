from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.config import ConfigError
from services.inference import models_file


def parse(doc: Any) -> models_file.ModelsConfig:
    return models_file.parse(doc, "models.yaml")


def test_no_file_means_the_bundled_model() -> None:
    config = models_file.load(None)
    assert [(m.name, m.backend) for m in config.models] == [("smollm2-135m-instruct", "local")]


def test_contract_example_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "from-env")
    config = parse(
        {
            "models": [
                {"name": "smollm2-135m-instruct", "backend": "local"},
                {
                    "name": "mock",
                    "aliases": ["mock-alias"],
                    "backend": "openai",
                    "timeout_s": 30,
                    "upstreams": [
                        {
                            "url": "http://127.0.0.1:18001/v1/",
                            "api_key": "sk-up",
                            "model": "served",
                        },
                        {"url": "http://127.0.0.1:18002/v1", "api_key_env": "UPSTREAM_KEY"},
                    ],
                },
            ]
        }
    )
    mock = config.models[1]
    assert mock.aliases == ("mock-alias",) and mock.timeout_s == 30.0
    assert mock.upstreams[0].url == "http://127.0.0.1:18001/v1"
    assert mock.upstreams[0].model == "served"
    assert mock.upstreams[1].api_key == "from-env"


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (
            {"models": [{"name": "a", "backend": "local", "colour": "red"}]},
            "models[0].colour: unknown key",
        ),
        ({"models": [{"name": "a", "backend": "magic"}]}, "models[0].backend"),
        ({"models": [{"backend": "local"}]}, "models[0].name: required"),
        ({"models": [{"name": "a", "backend": "openai"}]}, "models[0].upstreams"),
        (
            {"models": [{"name": "a", "backend": "openai", "upstreams": [{"url": "x"}]}]},
            "models[0].upstreams[0].url",
        ),
        (
            {
                "models": [
                    {
                        "name": "a",
                        "backend": "openai",
                        "upstreams": [{"url": "http://h", "token": "t"}],
                    }
                ]
            },
            "models[0].upstreams[0].token: unknown key",
        ),
        (
            {"models": [{"name": "a", "backend": "local"}, {"name": "a", "backend": "local"}]},
            "models[1]: id 'a' is already used",
        ),
        (
            {"models": [{"name": "a", "backend": "local", "fallbacks": ["b"]}]},
            "models[0].fallbacks[0]",
        ),
        ({"models": [{"name": "a", "backend": "local", "timeout_s": -1}]}, "models[0].timeout_s"),
        ({"modelz": []}, "modelz: unknown key"),
        ([], "(top level)"),
    ],
)
def test_problems_name_the_file_and_key_path(doc: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(doc)
    assert str(caught.value).startswith("models.yaml: ")
    assert where in str(caught.value)


def test_missing_api_key_env_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ConfigError, match="NOPE_KEY is not set"):
        parse(
            {
                "models": [
                    {
                        "name": "a",
                        "backend": "openai",
                        "upstreams": [{"url": "http://h", "api_key_env": "NOPE_KEY"}],
                    }
                ]
            }
        )


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        models_file.load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        models_file.load(bad)
