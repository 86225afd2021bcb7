"""The endpoint table file: a good table read back with its defaults and keys, and every
mistake refused with one line naming the file, the entry and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from reranker_nvidia.core.upstream.routing.table import (
    MAX_ENDPOINTS,
    READY_PATH,
    EndpointSpec,
    EndpointTableError,
    load_endpoint_table,
)

SECRET = "nvapi-s3cret-value"
ENVIRON = {"NIM_0_KEY": SECRET, "BLANK_KEY": "   ", "BAD_KEY": "two\nlines"}


def _load(tmp_path: Path, text: str | bytes) -> tuple[EndpointSpec, ...]:
    path = tmp_path / "endpoints.toml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return load_endpoint_table(path, ENVIRON)


def test_a_good_table_with_defaults_and_keys(tmp_path: Path) -> None:
    specs = _load(
        tmp_path,
        """
        [[endpoints]]
        url = "  http://nim-0:8000  "
        models = ["nvidia/llama-nemotron-rerank-1b-v2", "nvidia/llama-3_2-nv-rerankqa-1b-v2"]
        api_key_env = "NIM_0_KEY"

        [[endpoints]]
        url = "http://10.0.0.7:8000/v1/ranking"
        name = "gpu-b"
        tier = 1
        weight = 2.5
        api_key_env = false
        health_path = "/ready"

        [[endpoints]]
        url = "http://nim-2/v1"
        health_path = false

        [[endpoints]]
        url = "https://ai.api.nvidia.com"
        tier = 2
        """,
    )
    nim0, gpu_b, nim2, hosted = specs
    assert nim0 == EndpointSpec(
        index=0,
        url="http://nim-0:8000",
        name="nim-0:8000",
        tier=1,
        weight=1.0,
        models=frozenset(
            {"nvidia/llama-nemotron-rerank-1b-v2", "nvidia/llama-3.2-nv-rerankqa-1b-v2"}
        ),
        api_key_env="NIM_0_KEY",
        api_key=SECRET,
        uses_server_key=False,
        self_hosted=True,
        health_path=READY_PATH,
    )
    assert nim0.key("server-key") == SECRET
    assert SECRET not in repr(nim0)
    assert nim0.serves("nvidia/llama-3.2-nv-rerankqa-1b-v2")
    assert not nim0.serves("nvidia/rerank-qa-mistral-4b")

    assert (gpu_b.name, gpu_b.tier, gpu_b.weight, gpu_b.health_path) == ("gpu-b", 1, 2.5, "/ready")
    assert gpu_b.key("server-key") is None  # api_key_env = false: no key at all
    assert not gpu_b.uses_server_key

    assert (nim2.name, nim2.health_path, nim2.models) == ("nim-2:80", None, None)
    assert nim2.key("server-key") == "server-key"
    assert nim2.serves("anything/at-all")

    assert hosted.name == "ai.api.nvidia.com:443"
    assert (hosted.tier, hosted.self_hosted, hosted.health_path) == (2, False, None)
    assert hosted.uses_server_key and hosted.api_key_env is None and hosted.api_key is None


def test_an_ipv6_host_is_named_with_brackets(tmp_path: Path) -> None:
    (spec,) = _load(tmp_path, '[[endpoints]]\nurl = "http://[fd00::7]:8000"\n')
    assert spec.name == "[fd00::7]:8000"


FILE = "RERANKER_ENDPOINTS_FILE {path}: "
ENTRY = '[[endpoints]]\nurl = "http://nim-0:8000"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The file as a whole.
        ("", "endpoints: missing (add at least one [[endpoints]] entry)"),
        ("endpoints = []", "endpoints: empty (add at least one [[endpoints]] entry)"),
        (
            '[endpoints]\nurl = "http://nim-0:8000"\n',
            "endpoints: must be an array of tables, [[endpoints]] (got a table)",
        ),
        (
            '[[endpoint]]\nurl = "http://nim-0:8000"\n',
            "endpoint: unknown key (the file holds [[endpoints]] entries only)",
        ),
        (
            "[[endpoints]]\nurl = \n",
            "not valid TOML: Invalid value (at line 2, column 7)",
        ),
        (
            ENTRY * (MAX_ENDPOINTS + 1),
            f"endpoints: at most {MAX_ENDPOINTS} entries (got {MAX_ENDPOINTS + 1})",
        ),
        # An entry.
        ("endpoints = [1]", "endpoints[0]: must be a table (got 1)"),
        (
            ENTRY + '[[endpoints]]\nurl = "http://nim-1:8000"\nteir = 2\n',
            "endpoints[1].teir: unknown field (expected url, tier, weight, models, api_key_env,"
            " name, health_path)",
        ),
        # url
        ("[[endpoints]]\ntier = 1\n", "endpoints[0].url: missing (every endpoint needs one)"),
        ("[[endpoints]]\nurl = 8000\n", "endpoints[0].url: must be a string (got 8000)"),
        (
            '[[endpoints]]\nurl = "nim-0:8000"\n',
            "endpoints[0].url: must start with http:// or https://",
        ),
        ('[[endpoints]]\nurl = "http://"\n', "endpoints[0].url: has no host"),
        (
            '[[endpoints]]\nurl = "http://nim-0:99999"\n',
            "endpoints[0].url: not a valid URL (check the host and port)",
        ),
        # tier
        (
            ENTRY + '[[endpoints]]\nurl = "http://nim-1:8000"\ntier = "two"\n',
            'endpoints[1].tier: must be an integer of at least 1 (got "two")',
        ),
        (ENTRY + "tier = 0\n", "endpoints[0].tier: must be an integer of at least 1 (got 0)"),
        (ENTRY + "tier = 1.5\n", "endpoints[0].tier: must be an integer of at least 1 (got 1.5)"),
        (ENTRY + "tier = true\n", "endpoints[0].tier: must be an integer of at least 1 (got true)"),
        # weight
        (
            ENTRY + "weight = 0\n",
            "endpoints[0].weight: must be a number above 0 and at most 1000 (got 0)",
        ),
        (
            ENTRY + "weight = -1.5\n",
            "endpoints[0].weight: must be a number above 0 and at most 1000 (got -1.5)",
        ),
        (
            ENTRY + "weight = inf\n",
            "endpoints[0].weight: must be a number above 0 and at most 1000 (got inf)",
        ),
        (
            ENTRY + "weight = nan\n",
            "endpoints[0].weight: must be a number above 0 and at most 1000 (got nan)",
        ),
        (
            ENTRY + 'weight = "1"\n',
            'endpoints[0].weight: must be a number above 0 and at most 1000 (got "1")',
        ),
        # models
        (
            ENTRY + 'models = "nvidia/rerank-qa-mistral-4b"\n',
            "endpoints[0].models: must be an array of model ids"
            ' (got "nvidia/rerank-qa-mistral-4b")',
        ),
        (
            ENTRY + "models = []\n",
            "endpoints[0].models: empty (leave the field out to serve every model)",
        ),
        (
            ENTRY + 'models = ["nvidia/rerank-qa-mistral-4b", 7]\n',
            "endpoints[0].models[1]: must be a string (got 7)",
        ),
        (
            ENTRY + 'models = ["../etc/passwd"]\n',
            "endpoints[0].models[0]: '../etc/passwd' is not a model id ([org/]name[:tag], each"
            " part letters, digits, '.', '_' or '-', starting with a letter or digit)",
        ),
        # api_key_env
        (
            ENTRY + 'api_key_env = "NO_SUCH_KEY"\n',
            "endpoints[0].api_key_env: NO_SUCH_KEY is not set or is blank",
        ),
        (
            ENTRY + 'api_key_env = "BLANK_KEY"\n',
            "endpoints[0].api_key_env: BLANK_KEY is not set or is blank",
        ),
        (
            ENTRY + 'api_key_env = "BAD_KEY"\n',
            "endpoints[0].api_key_env: BAD_KEY holds a character a header cannot carry",
        ),
        (
            ENTRY + 'api_key_env = "nvapi-abc"\n',
            "endpoints[0].api_key_env: must be the name of an environment variable, or false to"
            ' send no key (got "nvapi-abc")',
        ),
        (
            ENTRY + "api_key_env = true\n",
            "endpoints[0].api_key_env: must be the name of an environment variable, or false to"
            " send no key (got true)",
        ),
        # name
        (
            ENTRY + 'name = "gpu a"\n',
            "endpoints[0].name: must be 1 to 64 letters, digits, '.', '_', ':' or '-', starting"
            ' with a letter or digit (got "gpu a")',
        ),
        (
            ENTRY + ENTRY,
            'endpoints[1].name: "nim-0:8000" is also the name of endpoints[0] (give each'
            " endpoint a distinct name)",
        ),
        (
            ENTRY + 'name = "a"\n' + '[[endpoints]]\nurl = "http://nim-1:8000"\nname = "a"\n',
            'endpoints[1].name: "a" is also the name of endpoints[0] (give each endpoint a'
            " distinct name)",
        ),
        # health_path
        (
            ENTRY + 'health_path = "v1/health/ready"\n',
            "endpoints[0].health_path: must be a path starting with '/' (no spaces), or false"
            ' not to poll (got "v1/health/ready")',
        ),
        (
            '[[endpoints]]\nurl = "https://ai.api.nvidia.com"\nhealth_path = "/v1/health/ready"\n',
            "endpoints[0].health_path: ai.api.nvidia.com is not polled (self-hosted NIM only)",
        ),
    ],
)
def test_every_mistake_is_one_line_naming_the_file_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(EndpointTableError) as caught:
        _load(tmp_path, text)
    path = tmp_path / "endpoints.toml"
    assert str(caught.value) == FILE.format(path=path) + message
    assert "\n" not in str(caught.value)


def test_a_key_never_shows_in_a_message(tmp_path: Path) -> None:
    with pytest.raises(EndpointTableError) as caught:
        _load(tmp_path, ENTRY + 'api_key_env = "NIM_0_KEY"\ntier = 0\n')
    assert SECRET not in str(caught.value)


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(EndpointTableError) as caught:
        load_endpoint_table(missing, {})
    assert str(caught.value) == (
        f"RERANKER_ENDPOINTS_FILE {missing}: cannot read it: No such file or directory"
    )
    with pytest.raises(EndpointTableError, match="cannot read it: Is a directory"):
        load_endpoint_table(tmp_path, {})


def test_a_file_that_is_not_utf8_or_too_large(tmp_path: Path) -> None:
    with pytest.raises(EndpointTableError, match=r"endpoints.toml: not UTF-8 text \(byte 1\)$"):
        _load(tmp_path, b"#\xff\n")
    with pytest.raises(EndpointTableError, match=r"endpoints.toml: larger than 1024 KiB$"):
        _load(tmp_path, b"#" * (1024 * 1024 + 1))


def test_a_long_value_is_shortened_in_a_message(tmp_path: Path) -> None:
    with pytest.raises(EndpointTableError) as caught:
        _load(tmp_path, ENTRY + f'tier = "{"x" * 500}"\n')
    assert str(caught.value).endswith(f'(got "{"x" * 40}...")')
