"""Monitoring: the ``status``/``inspect``/``control``/``events``/``monitor`` commands,
the web dashboard (:mod:`polyq.monitor.web`, needs ``polyq[monitor]``) and the
worker liveness probe (:mod:`polyq.monitor.liveness`).

Importing this package needs nothing beyond polyq itself; Flask and
prometheus-client are imported only by the dashboard.
"""
