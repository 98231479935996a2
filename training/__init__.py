"""Training loops: ERM, PruSC pruning and retraining, evaluation, and the contrastive loss."""
