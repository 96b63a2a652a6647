"""AgentWrite data construction: ``select`` instructions from pools, ``plan`` each (one line per paragraph with
its main point and word budget), ``write`` it paragraph by paragraph, ``postprocess`` into training samples."""
