"""Training: the ``base`` checkpoint, the ``general`` chat set, ``mix``, ``sft`` (TRL's SFTTrainer), preference
``pairs`` sampled from the SFT model and judged, and ``dpo`` (TRL's DPOTrainer); a config dataclass beside each."""
