"""Optional integrations (each needs its extra: ``polyq[otel]``...)."""
