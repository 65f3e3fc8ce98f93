"""sete_lite: SENT (semantic- and token-entropy RLVR) as an efficient single-GPU LoRA trainer.

One module per idea:
- logprobs: per-token log-probs and entropies from hidden states, chunked over the vocabulary.
- loss: the SENT token-entropy KL / covariance loss and the baselines the paper compares with.
- config: flat YAML configs dispatched to dataclasses, with helpful errors.
"""

__version__ = "0.1.0"
