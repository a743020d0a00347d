"""The daemon runtime: what every long-running command shares.

The POP-before-SMTP table's lifecycle (start, sweep, durable state, close), the watcher
task, the control socket, signals and logging. ``relaypolicy serve``, ``smtpd`` and
``watch`` are thin compositions of these parts with one front end each; see
``docs/architecture.md``.
"""
