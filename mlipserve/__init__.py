"""mlipserve: an inference server for machine-learned interatomic potentials.

Components live in sub-packages: :mod:`mlipserve.models` (the Potential contract, batched graphs, backends,
model cards), :mod:`mlipserve.server` (HTTP app, broker, batching worker, CLI) and :mod:`mlipserve.clients`
(Python clients and the ASE calculator).
"""

__version__ = "0.1.0"
