"""Lab studies around the product: the method comparison and its report, the cost benchmark, emulator
measurements and the adapter-transfer study. Each is a script or a CLI subcommand; nothing in the product
(``simulations.runner``, the apps) imports from here."""
