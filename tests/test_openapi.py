"""Every HTTP route is typed and documented in /openapi.json, request bodies with examples."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support import Sidecar

ROUTES = {
    ("get", "/.well-known/live"),
    ("get", "/.well-known/ready"),
    ("get", "/meta"),
    ("post", "/rerank"),
    ("post", "/v1/ranking"),
    ("post", "/v1/retrieval/{segment}/reranking"),
    ("post", "/v1/retrieval/{org}/{model}/reranking"),
    ("get", "/v1/models"),
    ("get", "/metrics"),
    ("get", "/health/endpoints"),
    ("post", "/v1/rerank"),
    ("post", "/v2/rerank"),
}


def test_every_route_is_documented_with_examples(sidecar: Sidecar) -> None:
    spec = httpx.get(sidecar.http_url + "/openapi.json").json()
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert documented == ROUTES
    schemas = spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert "200" in operation["responses"] or "204" in operation["responses"]
            if method == "post":
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                schema = schemas[ref.rsplit("/", 1)[1]]
                has_examples = "examples" in schema or any(
                    "examples" in field for field in schema["properties"].values()
                )
                assert has_examples, f"{method} {path} has no request example"
                ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
                assert ok, f"{method} {path} has no typed response"
    assert httpx.get(sidecar.http_url + "/docs").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_render_from_the_sidecars_own_assets(sidecar: Sidecar, page: str) -> None:
    html = httpx.get(sidecar.http_url + page)
    assert html.status_code == 200
    assert "text/html" in html.headers["content-type"]
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assets += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html.text)  # the OpenAPI document
    assert any(asset.endswith(".js") for asset in assets), html.text
    assert not re.search(r"https?://", html.text), "nothing may load from another host"
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = httpx.get(sidecar.http_url + asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 100, asset
