"""IE-Vnet model: card (``card``), network (``net``), weights I/O (``weights``), inference
(``infer``).  Import the submodules directly; ``card`` needs no torch."""
