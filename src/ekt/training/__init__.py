"""Fine-tuning students: SFT on transformers.Trainer, packing, knowledge distillation."""
