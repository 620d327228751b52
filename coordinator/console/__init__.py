"""The authority's console (``/console`` on the coordinator's HTTP app): the network and the
model registry, read-only, for the authority's analysts (accounts in the coordinator's data dir,
``ipjms coordinator analyst add``). Built on ``servicekit.web``."""
