"""Result-store plugins for polyq: each imports only the core public interface, its client and,
within a family (Redis, SQL), the connection code of the transport for the same server."""
