//! Shared helpers for the integration tests, benchmarks and examples.
