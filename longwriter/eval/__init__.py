"""Evaluation: the ``eval`` section, LongWrite-Ruler (``ruler``), LongBench-Write (``longbench``), pairwise
``compare``, the judge's ``agreement`` with people, ``segments``, ``nll`` and the plots. What training shares
with them lives outside: benchmark files (``longwriter.benchmark``), answering (``longwriter.generation``), the
judge (``longwriter.judge``) and the scores (``longwriter.scoring``)."""
