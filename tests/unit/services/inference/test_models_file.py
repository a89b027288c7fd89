from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import ConfigError
from services.inference import models_file


def parse(doc: Any) -> models_file.ModelsConfig:
    return models_file.parse(doc, "models.yaml")


def test_no_file_means_the_bundled_model() -> None:
    config = models_file.load(None)
    assert [(m.name, m.backend) for m in config.models] == [
        ("smollm2-135m-instruct", "local"),
        ("multilingual-e5-small", "local-embedding"),
    ]


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
        *(
            (
                {"models": [{"name": "a", "backend": "openai", "upstreams": [upstream]}]},
                f"models[0].upstreams[0].{key}",
            )
            for upstream, key in [
                ({"url": "http://h:99999/v1"}, "url: is not a valid URL"),
                ({"url": "http:///v1"}, "url: has no host"),
                ({"url": "http://h/v1?x=1"}, "url: must not have a query"),
                ({"url": "http://h", "api_key": "sk-a\r\nx: y"}, "api_key: must be printable"),
                ({"url": "http://h", "api_key": "sk a"}, "api_key: must be printable"),
            ]
        ),
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


def test_timeouts_and_local_embedding() -> None:
    config = parse(
        {
            "models": [
                {
                    "name": "up",
                    "backend": "openai",
                    "timeout_s": 5,
                    "connect_timeout_s": 0.5,
                    "fallbacks": ["e5"],
                    "upstreams": [{"url": "http://127.0.0.1:1/v1"}],
                },
                {"name": "e5", "backend": "local-embedding"},
            ]
        }
    )
    up, e5 = config.models
    assert (up.timeout_s, up.connect_timeout_s) == (5.0, 0.5)
    assert up.operations == {"chat", "embeddings"} and e5.operations == {"embeddings"}


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (
            {"models": [{"name": "a", "backend": "local", "connect_timeout_s": 0}]},
            "models[0].connect_timeout_s",
        ),
        (
            {
                "models": [
                    {"name": "a", "backend": "local", "fallbacks": ["e"]},
                    {"name": "e", "backend": "local-embedding"},
                ]
            },
            "models[0].fallbacks[0]: 'e' (backend local-embedding) cannot serve",
        ),
        (
            {"models": [{"name": "e", "backend": "local-embedding", "upstreams": []}]},
            "models[0].upstreams",
        ),
    ],
)
def test_new_keys_are_checked(doc: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(doc)
    assert where in str(caught.value)


def test_upstream_keys_never_show_in_a_repr() -> None:
    config = parse(
        {
            "models": [
                {
                    "name": "up",
                    "backend": "openai",
                    "upstreams": [{"url": "http://h/v1", "api_key": "sk-very-secret"}],
                }
            ]
        }
    )
    assert "sk-very-secret" not in repr(config)


UP = {"url": "http://127.0.0.1:1/v1"}


def test_capabilities_are_read_and_default_to_text_only() -> None:
    config = parse(
        {
            "models": [
                {"name": "v", "backend": "openai", "upstreams": [UP], "capabilities": ["vision"]},
                {
                    "name": "va",
                    "backend": "openai",
                    "upstreams": [UP],
                    "capabilities": ["audio", "vision", "audio"],
                },
                {"name": "t", "backend": "openai", "upstreams": [UP]},
                {"name": "l", "backend": "local"},
            ]
        }
    )
    assert [m.capabilities for m in config.models] == [
        ("vision",),
        ("audio", "vision"),
        (),
        (),
    ]


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        (
            {"name": "a", "backend": "openai", "upstreams": [UP], "capabilities": ["vision", "x"]},
            "models[0].capabilities[1]: unknown capability 'x'; known: vision, audio",
        ),
        (
            {"name": "a", "backend": "openai", "upstreams": [UP], "capabilities": "vision"},
            "models[0].capabilities: must be a list",
        ),
        (
            {"name": "a", "backend": "local", "capabilities": ["vision"]},
            "models[0].capabilities: backend local takes text only",
        ),
    ],
)
def test_bad_capabilities_are_configuration_errors(entry: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"models": [entry]})
    assert where in str(caught.value)


def test_inline_images_defaults_and_limits() -> None:
    vision = {"backend": "openai", "upstreams": [UP], "capabilities": ["vision"]}
    config = parse(
        {
            "models": [
                {"name": "a", **vision, "inline_images": True},
                {
                    "name": "b",
                    **vision,
                    "inline_images": {
                        "allow_private": True,
                        "max_mb": 2,
                        "total_mb": 4,
                        "timeout_s": 0.5,
                    },
                },
                {"name": "c", **vision},
            ]
        }
    )
    a, b, c = (m.inline_images for m in config.models)
    assert a == models_file.InlineImages()
    assert a is not None and not a.allow_private and a.max_bytes == 10 * 1024 * 1024
    assert b == models_file.InlineImages(True, 2 * 1024 * 1024, 4 * 1024 * 1024, 0.5)
    assert c is None


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"inline_images": True}, "models[0].inline_images: needs 'vision'"),
        (
            {"capabilities": ["vision"], "inline_images": {"max_mb": 0}},
            "models[0].inline_images.max_mb",
        ),
        (
            {"capabilities": ["vision"], "inline_images": {"allow_private": "yes"}},
            "models[0].inline_images.allow_private",
        ),
        (
            {"capabilities": ["vision"], "inline_images": {"follow_redirects": True}},
            "models[0].inline_images.follow_redirects: unknown key",
        ),
        ({"capabilities": ["vision"], "inline_images": "on"}, "models[0].inline_images"),
    ],
)
def test_bad_inline_images_are_configuration_errors(extra: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"models": [{"name": "a", "backend": "openai", "upstreams": [UP], **extra}]})
    assert where in str(caught.value)
