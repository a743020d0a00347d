"""The milter front end: Sendmail's and Postfix's filter protocol, decided at RCPT.

:mod:`~relaypolicy.milter.codec` is the protocol, sans I/O; :mod:`~relaypolicy.milter.server`
the asyncio server around it; :mod:`~relaypolicy.milter.settings` the ``[milter]`` section.
"""
