"""The fake LLM upstream's parts; the public names are in `benchmarks.fake_upstream`."""
