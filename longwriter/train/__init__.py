"""Training: the ``base`` checkpoint (``base_model``), the ``general`` chat set, ``mix``, ``sft`` (TRL's
SFTTrainer), preference ``pairs`` sampled from the SFT model and judged, ``dpo`` (TRL's DPOTrainer) and ``grpo``
(TRL's GRPOTrainer, ``rewards``); a config dataclass beside each, and in ``trainer`` what the trainers share.
Nothing here imports ``longwriter.eval`` (tests/test_layers.py)."""
