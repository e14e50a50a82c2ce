"""flowrelay's suggester service: every failed run becomes guidance a user can act on.

Modules: :mod:`.rules` (error code -> suggestion), :mod:`.analysis` (workflow graph checks),
:mod:`.advice` (suggestion-only mode), :mod:`.assist` (optional model-written explanation),
:mod:`.service` (the FastStream app on NATS), :mod:`.settings`.
"""
