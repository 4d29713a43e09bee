"""ASE-free evaluation of models of K >= 1 members on arrays: structure checks, neighbour lists,
threads, the kernels, and the one result path (:func:`ace_uq_calc.engine.results.model_results`)."""
