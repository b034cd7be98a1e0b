"""Helpers shipped for tests, demos and benchmarks (like httpx.MockTransport)."""
