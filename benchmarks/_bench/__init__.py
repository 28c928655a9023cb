"""The throughput harness behind `llm-proxy bench`; the entry point is `benchmarks.bench_http`."""
