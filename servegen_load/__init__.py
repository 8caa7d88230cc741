"""servegen-load: realistic per-client LLM serving workloads and an open-loop load generator."""

__version__ = "0.1.0"
