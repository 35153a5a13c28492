"""igcli: point-in-time correct, feature-store-backed like prediction for Instagram posts.

The library stages are importable without Typer: ``igcli.ingest``, ``igcli.features``,
``igcli.train``, ``igcli.export`` and ``igcli.score``. ``igcli.cli`` is a thin shell over them.
"""

__version__ = "0.1.0"
