"""``mlipserve eval``: matbench-discovery-style evaluation of models through the server (metrics in :mod:`.metrics`)."""
