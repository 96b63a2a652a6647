"""Evaluation: benchmark files, answering, the judge, scoring, LongWrite-Ruler (``ruler``), LongBench-Write
(``longbench``), pairwise ``compare`` and the plots."""
