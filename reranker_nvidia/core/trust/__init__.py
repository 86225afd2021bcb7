"""Who may do what: keyed digests, API keys and the caller token, redaction, the
connect-time address guard, and the keys each endpoint has verified."""
