"""Broker plugins for polyq: each module imports only the core public interface and its client."""
