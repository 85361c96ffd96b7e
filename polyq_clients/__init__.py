"""Connection code a broker family's transport and result backend share.

One module per family (``redis``, ``sql``, ``aws``): how to read the family's URLs,
build and configure the client, and turn the driver's errors into polyq's. The
plugins in ``polyq_transports`` and ``polyq_backends`` import from here, never from
each other. Nothing in the core imports this package.
"""
