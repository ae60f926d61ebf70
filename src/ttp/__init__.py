"""TTP: test-time personalization with Best-of-N, personalized reward models, and the scaling
law that explains their curves.  The data flow is one module per stage; ``ttp.runs.pipeline`` runs
them in a run folder and ``ttp.cli`` is the command line."""

__version__ = "0.1.0"
