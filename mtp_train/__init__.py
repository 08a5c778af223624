"""Training pipeline for the refserver MTP head: prompts -> target generations -> head -> eval.

- `prompts`: builds training chat prompts from offline text (Python stdlib, PSF-2.0) and
  instruction templates written for this project, excluding the held-out prompts.
- `generate`: batched decoding with the frozen target, keeping its hidden states.
- `train_head`: distillation + chained (EAGLE-style) training of `refserver.mtp_head.MTPHead`.
- `evaluate`: first-draft and chained second-draft acceptance on the held-out prompts.
- `pipeline`: all of it in one command (what ran on the GPU machine).
"""
