"""Which endpoint answers: the endpoint table, the router, health probes, breakers."""
