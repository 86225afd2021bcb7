"""What sits between the coalescer and the wire: the NIM budget, retries, the call itself, and
the connections it travels on."""
