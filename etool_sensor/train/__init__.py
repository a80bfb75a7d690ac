"""Training: tokenizer inputs, encoder, instruction tasks, LLM teacher, distillation (needs the `train` extra)."""
