"""``relaypolicy smtpd``: a small policy-enforcing SMTP server, and its password file.

- :mod:`relaypolicy.smtpd.server` — :class:`~relaypolicy.smtpd.server.SmtpdServer`
- :mod:`relaypolicy.smtpd.delivery` — Maildirs and the smarthost
- :mod:`relaypolicy.smtpd.settings` — the ``[smtpd]`` table and the embedded default
- :mod:`relaypolicy.smtpd.passwords` — the scrypt password file (standard library only)
- the ``smtpd`` and ``passwd`` commands: :mod:`relaypolicy.cli.smtpd`, :mod:`relaypolicy.cli.passwd`

Nothing is imported here, so ``relaypolicy passwd`` works without aiosmtpd installed.
See ``docs/aiosmtpd.md``.
"""
