"""Where a request goes: NIM endpoint URLs, model ids, the model catalog, and the
target (route, model, endpoints, keys) each request resolves to."""
