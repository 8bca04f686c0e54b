"""``florete-agent tui``: a full-screen terminal UI for the agent, in the spirit of k9s.

The TUI is a client of the agent's local API only (:mod:`agent.tui.adapter`), runs in its own
process and is the only part of the project that imports Textual: :mod:`agent.tui.command`
registers the command without importing it, so ``florete-agent run`` never loads Textual.

Modules: ``app`` (the application, view switching, connection banner, command and filter
prompt), one module per view (``overview``, ``pods``, ``neighbours``, ``links``, ``peers``,
``pairing``, ``supernode``, ``bridges``), ``logs`` (the log viewer), ``dialogs`` (describe,
confirm, help), ``widgets`` (shared widgets), ``adapter`` and ``logfollow`` (blocking API calls,
run in worker threads), ``fmt`` (text formatting).
"""
