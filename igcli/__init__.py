"""igcli: point-in-time correct, feature-store-backed like prediction for Instagram posts.

The library stages are importable without Typer: ``igcli.commands.ingest``, ``igcli.features.metadata``,
``igcli.commands.train``, ``igcli.model.export`` and ``igcli.commands.score``. ``igcli.cli`` is a thin shell over them.
"""

__version__ = "0.1.0"
