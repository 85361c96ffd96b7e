"""Result-store plugins for polyq: each imports only the core public interface and its client."""
