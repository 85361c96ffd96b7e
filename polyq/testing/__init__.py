"""Test support shipped with polyq: broker URLs for tests (:mod:`polyq.testing.services`),
a pytest plugin (:mod:`polyq.testing.pytest_plugin`) and the conformance suite every
transport and result-backend plugin must pass (:mod:`polyq.testing.conformance`).

A plugin author checks a plugin with::

    pytest -p polyq.testing.pytest_plugin --pyargs polyq.testing.conformance \\
        --polyq-transport-url 'myscheme://...' --polyq-backend-url 'myscheme://...'

or by subclassing ``TransportSuite`` / ``BackendSuite`` in their own tests.
"""
